# @summary Where the artifact of a deployment comes from (`spec.source`), with tether's own key names:
#   exactly one of `url` (a tar, zip or Debian package) and `git` (a repository, see Tether::GitSource).
type Tether::Source = Struct[{
  Optional[url]             => Pattern[/\A(https?|file):\/\//],
  Optional[git]             => Tether::GitSource,
  Optional[headers]         => Hash[Pattern[/\A[A-Za-z0-9!#$%&'*+.^_`|~-]+\z/], Tether::HeaderValue],
  Optional[sha256]          => Pattern[/\A[0-9a-fA-F]{64}\z/],
  Optional[format]          => Enum['auto', 'tar', 'tar.gz', 'tar.bz2', 'tar.xz', 'tar.zst', 'zip', 'deb'],
  Optional[debRoot]         => Pattern[/\A[^\/]/],
  Optional[stripComponents] => Variant[Enum['auto'], Integer[0, 16]],
  Optional[limits]          => Struct[{
    Optional[maxBytes]   => Integer[1],
    Optional[maxMembers] => Integer[1],
    Optional[maxRatio]   => Variant[Integer[1], Float[1.0]],
  }],
}]
