# @summary A named set of hooks shared by applications: writes `<manifests_dir>/<title>.yaml`
#   (`kind: ApplicationKind`).
#
# The parameters follow `application::kind` of opus-codium/puppet-application: each of the
# four hooks is given as `*_content` (the script text) or `*_source` (any `source` of a
# Puppet file resource: `puppet:///modules/...`, a local path, an http URL).
#
# * `*_content` becomes an inline hook in the manifest.
# * `*_source` is copied by Puppet, as the original module did, to
#   `<hooks_dir>/<title>/<hook>` (root, 0755), and the manifest points at the copy with
#   `{path: ...}`. The copy is written before the manifest; `<hooks_dir>/<title>` holds
#   nothing else and goes away when no `*_source` is left.
#
# `hooks` takes tether's own form instead (phase => script text or `{ path => '/executable' }`),
# for example a hook already installed on the node. A phase may be given only one way.
#
# Hooks run in the deployment directory as the application's `deploy_user`, with
# APPLICATION_NAME, APPLICATION_PATH, ENVIRONMENT, DEPLOYMENT_NAME, DEPLOYMENT_PATH,
# PREVIOUS_DEPLOYMENT_NAME, HOOK_NAME, USER_MAPPING_* and GROUP_MAPPING_* set. A failing
# `before_*` hook aborts; a failing `after_*` hook fails the step (unlike the original
# module, whose after hooks were ignored): after_activate switches `current` back.
#
# @example
#   tether::kind { 'rails':
#     before_activate_content => "#!/bin/sh\nset -e\nRAILS_ENV=\$ENVIRONMENT bundle exec rails db:migrate\n",
#     after_activate_source   => 'puppet:///modules/profile/rails/restart',
#   }
#
# @param ensure `absent` removes the manifest and the copied hooks.
# @param before_deploy_content Script text of the beforeDeploy hook.
# @param before_deploy_source File source of the beforeDeploy hook.
# @param after_deploy_content Script text of the afterDeploy hook.
# @param after_deploy_source File source of the afterDeploy hook.
# @param before_activate_content Script text of the beforeActivate hook.
# @param before_activate_source File source of the beforeActivate hook.
# @param after_activate_content Script text of the afterActivate hook.
# @param after_activate_source File source of the afterActivate hook.
# @param hooks Hooks in tether's form, for phases not given above.
# @param labels `metadata.labels`.
define tether::kind (
  Enum['present', 'absent'] $ensure = 'present',
  Optional[String[1]] $before_deploy_content = undef,
  Optional[String[1]] $before_deploy_source = undef,
  Optional[String[1]] $after_deploy_content = undef,
  Optional[String[1]] $after_deploy_source = undef,
  Optional[String[1]] $before_activate_content = undef,
  Optional[String[1]] $before_activate_source = undef,
  Optional[String[1]] $after_activate_content = undef,
  Optional[String[1]] $after_activate_source = undef,
  Tether::Hooks $hooks = {},
  Hash[String[1], String] $labels = {},
) {
  include tether

  unless $title =~ Tether::Name {
    fail("tether::kind[${title}]: the title is the kind's name; use lower-case letters, digits, '.', '_' and '-' (at most 63)")
  }

  $directory = "${tether::hooks_dir}/${title}"
  $manifest = "${tether::manifests_dir}/${title}.yaml"
  # tether's phase => [the original module's hook name, content, source]
  $given = {
    'beforeDeploy'   => ['before_deploy', $before_deploy_content, $before_deploy_source],
    'afterDeploy'    => ['after_deploy', $after_deploy_content, $after_deploy_source],
    'beforeActivate' => ['before_activate', $before_activate_content, $before_activate_source],
    'afterActivate'  => ['after_activate', $after_activate_content, $after_activate_source],
  }

  $given.each |$phase, $hook| {
    if $hook[1] =~ NotUndef and $hook[2] =~ NotUndef {
      fail("tether::kind[${title}]: give ${hook[0]}_content or ${hook[0]}_source, not both")
    }
    if ($hook[1] =~ NotUndef or $hook[2] =~ NotUndef) and $hooks[$phase] =~ NotUndef {
      fail("tether::kind[${title}]: the ${phase} hook is given both in hooks and as ${hook[0]}_*")
    }
  }

  $sources = $given.filter |$phase, $hook| { $hook[2] =~ NotUndef }
  $all_hooks = $given.map |$phase, $hook| {
    $hook_spec = if $hook[1] =~ NotUndef {
      $hook[1]
    } elsif $hook[2] =~ NotUndef {
      { 'path' => "${directory}/${hook[0]}" }
    } else {
      $hooks[$phase]
    }
    [$phase, $hook_spec]
  }.filter |$pair| { $pair[1] =~ NotUndef }.convert_to(Hash)

  if $ensure == 'present' and !empty($sources) {
    file { $directory:
      ensure  => directory,
      owner   => 'root',
      group   => 'root',
      mode    => '0755',
      recurse => true,
      purge   => true,
      force   => true,
      backup  => false,
      before  => Tether::Manifest[$manifest],
    }
    $sources.each |$phase, $hook| {
      file { "${directory}/${hook[0]}":
        ensure => file,
        source => $hook[2],
        owner  => 'root',
        group  => 'root',
        mode   => '0755',
        backup => false,
        before => Tether::Manifest[$manifest],
      }
    }
  } else {
    file { $directory:
      ensure => absent,
      force  => true,
      backup => false,
    }
  }

  $metadata = { 'name' => $title, 'labels' => $labels }.filter |$key, $value| { tether::given($value) }
  $document = {
    'apiVersion' => 'tether/v1',
    'kind'       => 'ApplicationKind',
    'metadata'   => $metadata,
    'spec'       => { 'hooks' => $all_hooks },
  }

  tether::manifest { $manifest:
    ensure  => $ensure,
    content => tether::to_yaml($document, ["Managed by Puppet (Tether::Kind[${title}]); local changes are overwritten."]),
  }
}
