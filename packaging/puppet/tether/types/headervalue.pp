# @summary An HTTP header value: a literal (a plain or Sensitive string), `{ fromFile => '/path' }`
#   or `{ fromEnv => 'VARIABLE' }`.
type Tether::HeaderValue = Variant[
  String,
  Sensitive[String],
  Struct[{ fromFile => Pattern[/\A\//] }],
  Struct[{ fromEnv => Pattern[/\A[A-Za-z_][A-Za-z0-9_]*\z/] }],
]
