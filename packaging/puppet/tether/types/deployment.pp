# @summary A deployment name (`spec.deployment`); `current` and `persistent-data` are refused by the define.
type Tether::Deployment = Pattern[/\A[A-Za-z0-9][A-Za-z0-9._+-]{0,127}\z/]
