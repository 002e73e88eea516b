# @summary One hook: inline script text (without a shebang it runs under /bin/sh), or
#   `{ path => '/absolute/executable' }`.
type Tether::Hook = Variant[
  String[1],
  Struct[{ path => Pattern[/\A\//] }],
]
