# @summary A node name (`metadata.name` of the node file): a lower-case RFC 1123 host name, 253 characters at most.
type Tether::NodeName = Pattern[/\A(?=.{1,253}\z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\z/]
