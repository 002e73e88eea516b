# @summary An absolute, normalised path: no trailing slash, no empty, `.` or `..` component, not `/`.
type Tether::Path = Pattern[/\A(?!.*\/\.\.?(\/|\z))(\/[^\/\u0000]+)+\z/]
