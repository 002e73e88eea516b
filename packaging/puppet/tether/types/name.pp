# @summary The name of an application or a kind: `metadata.name` in a tether manifest.
type Tether::Name = Pattern[/\A[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?\z/]
