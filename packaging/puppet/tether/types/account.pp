# @summary A user or group name in `user_mapping` and `group_mapping`.
type Tether::Account = Pattern[/\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\z/]
