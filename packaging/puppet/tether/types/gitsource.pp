# @summary A git repository as the source of a deployment (`spec.source.git`), with tether's own key
#   names: `url` (https, ssh or file), `ref` (a tag, a branch or a full commit id; tether's default is
#   `{deployment}`), `lfs` (`refuse` or `ignore`), `subdirectory`, `headers` (as `source.headers`, for
#   https), `sshKey` (`{ fromFile => '/path' }`, for ssh), `knownHosts` (a file), and `verify`
#   (`{ allowedSigners => '/path' }` or `{ gpgKeyring => '/path' }`).
type Tether::GitSource = Struct[{
  url                    => String[1],
  Optional[ref]          => String[1],
  Optional[lfs]          => Enum['refuse', 'ignore'],
  Optional[subdirectory] => String[1],
  Optional[headers]      => Hash[Pattern[/\A[A-Za-z0-9!#$%&'*+.^_`|~-]+\z/], Tether::HeaderValue],
  Optional[sshKey]       => Struct[{ fromFile => Pattern[/\A\//] }],
  Optional[knownHosts]   => Pattern[/\A\//],
  Optional[verify]       => Variant[
    Struct[{ allowedSigners => Pattern[/\A\//] }],
    Struct[{ gpgKeyring => Pattern[/\A\//] }],
  ],
}]
