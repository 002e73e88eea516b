# @summary Hooks by phase, with tether's own phase names (`spec.hooks`).
type Tether::Hooks = Struct[{
  Optional[beforeDeploy]   => Tether::Hook,
  Optional[afterDeploy]    => Tether::Hook,
  Optional[beforeActivate] => Tether::Hook,
  Optional[afterActivate]  => Tether::Hook,
}]
