# @summary Node labels (`metadata.labels` of the node file), which rollout wave selectors match: a name is an
#   optional DNS-subdomain prefix and `/`, then 1 to 63 letters, digits, `-`, `_` or `.` starting and ending with
#   a letter or digit; a value is empty or of the same form (63 characters at most). Values are strings.
type Tether::Labels = Hash[
  Pattern[/\A([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?\z/],
  Pattern[/\A([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?\z/],
  0, 64,
]
