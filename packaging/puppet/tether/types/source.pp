# @summary Where the artifact of a deployment comes from (`spec.source`), with tether's own key names.
type Tether::Source = Struct[{
  url                       => Pattern[/\A(https?|file):\/\//],
  Optional[headers]         => Hash[Pattern[/\A[A-Za-z0-9!#$%&'*+.^_`|~-]+\z/], Tether::HeaderValue],
  Optional[sha256]          => Pattern[/\A[0-9a-fA-F]{64}\z/],
  Optional[format]          => Enum['auto', 'tar', 'tar.gz', 'tar.bz2', 'tar.xz', 'tar.zst', 'zip'],
  Optional[stripComponents] => Variant[Enum['auto'], Integer[0, 16]],
  Optional[limits]          => Struct[{
    Optional[maxBytes]   => Integer[1],
    Optional[maxMembers] => Integer[1],
    Optional[maxRatio]   => Variant[Integer[1], Float[1.0]],
  }],
}]
