# @summary One application for tether: writes `<manifests_dir>/<title>.yaml` (`kind: Application`).
#
# The parameters follow the `application` define of opus-codium/puppet-application,
# so a profile moves over by renaming `application { ... }` to `tether::application { ... }`
# and adding what to deploy (`deployment`, `source`). The title is the manifest's
# `metadata.name`. Unset parameters are left out of the manifest, so tether's defaults
# apply (`tether schema application` lists them).
#
# tether creates `path` and the deployments itself; this define does not manage them.
#
# @example
#   tether::application { 'acme':
#     environment  => 'production',
#     path         => '/opt/acme',
#     kind         => 'rails',
#     deployment   => 'v1.4.2',
#     source       => {
#       url     => 'https://artifacts.example.com/acme/{deployment}.tar.gz',
#       headers => { 'JOB-TOKEN' => { fromFile => '/etc/tether/secrets/acme-token' } },
#     },
#     deploy_user  => 'deploy',
#     deploy_group => 'deploy',
#     retention    => 5,
#   }
#
# @example A git tag, from a mirror tether keeps on the node, its signature checked
#   tether::application { 'shop':
#     path       => '/srv/shop',
#     deployment => 'v2.1.0',
#     source     => {
#       git => {
#         url        => 'ssh://git@git.example.com/shop.git',
#         ref        => '{deployment}',
#         sshKey     => { fromFile => '/etc/tether/secrets/shop-deploy-key' },
#         knownHosts => '/etc/tether/known_hosts',
#         verify     => { allowedSigners => '/etc/tether/keys/shop.allowed_signers' },
#       },
#     },
#   }
#
# @param path `spec.path`: the directory that holds the deployments.
# @param ensure `absent` removes the manifest; tether then stops managing the application and
#   leaves its files.
# @param application `spec.application`: the name passed to hooks and URLs (default: the title).
# @param environment `spec.environment` (tether's default: production).
# @param kind `spec.kind`: the title of a `tether::kind` (or the name of another ApplicationKind).
# @param deployment `spec.deployment`: the desired deployment; leave it out to let
#   `tether deploy` set it.
# @param source `spec.source`, with tether's key names: exactly one of `url` (with headers,
#   sha256, format, debRoot, stripComponents, limits) and `git` (a hash of url, ref, lfs,
#   subdirectory, headers, sshKey, knownHosts, verify: see Tether::GitSource). A header value
#   that is a Sensitive string keeps the whole manifest out of Puppet's logs and reports.
# @param deploy_user `spec.user`: owner of the deployments; hooks run as this user.
# @param deploy_group `spec.group`.
# @param user_mapping `spec.userMapping`: .mtree uname => local user.
# @param group_mapping `spec.groupMapping`: .mtree gname => local group; empty means the same
#   as user_mapping (tether's rule, as the original module's default).
# @param retention `spec.retention.keep`: complete deployments kept after each deploy.
# @param hooks `spec.hooks`: the application's own hooks, run after its kind's, with tether's
#   phase names (beforeDeploy, afterDeploy, beforeActivate, afterActivate).
# @param hook_timeout `spec.hookTimeoutSeconds`.
# @param persistent_data `spec.persistentData`: `auto` or `off`.
# @param rollback_on_failure `spec.rollbackOnFailure`.
# @param drift `spec.drift`: `correct` or `report`.
# @param drift_ignore `spec.driftIgnore`: globs exempt from content drift.
# @param suspend `spec.suspend`: stop reconciling this application.
# @param labels `metadata.labels`.
# @param rollout `spec.rollout`, with the schema's key names (`from`, `id`, `startedAt`, `waves` of
#   `selector`/`percent`/`after`, `gate` of `prometheus`/`query`/`intervalSeconds`/`timeoutSeconds`);
#   needs `deployment`. `tether validate` checks it.
# @param health_check `spec.healthCheck`, with the schema's key names (`http` of `url`/`expectStatus`, or
#   `command`; `intervalSeconds`, `timeoutSeconds`, `healthySeconds`, `deadlineSeconds`).
define tether::application (
  Tether::Path $path,
  Enum['present', 'absent'] $ensure = 'present',
  Optional[String[1, 128]] $application = undef,
  Optional[String[1, 128]] $environment = undef,
  Optional[Tether::Name] $kind = undef,
  Optional[Tether::Deployment] $deployment = undef,
  Optional[Tether::Source] $source = undef,
  Optional[String[1, 32]] $deploy_user = undef,
  Optional[String[1, 32]] $deploy_group = undef,
  Hash[Tether::Account, Tether::Account] $user_mapping = {},
  Hash[Tether::Account, Tether::Account] $group_mapping = {},
  Optional[Integer[1, 1000]] $retention = undef,
  Tether::Hooks $hooks = {},
  Optional[Variant[Integer[1, 86400], Float[0.001, 86400.0]]] $hook_timeout = undef,
  Optional[Enum['auto', 'off']] $persistent_data = undef,
  Optional[Boolean] $rollback_on_failure = undef,
  Optional[Enum['correct', 'report']] $drift = undef,
  Array[String[1]] $drift_ignore = [],
  Optional[Boolean] $suspend = undef,
  Hash[String[1], String] $labels = {},
  Hash[String[1], Any] $rollout = {},
  Hash[String[1], Any] $health_check = {},
) {
  include tether

  unless $title =~ Tether::Name {
    fail("tether::application[${title}]: the title is the manifest name; use lower-case letters, digits, '.', '_' and '-' (at most 63)")
  }
  if $deployment =~ Pattern[/\A(current|persistent-data)\z/] {
    fail("tether::application[${title}]: '${deployment}' is not a deployment name; tether keeps it for its own use")
  }

  if $source =~ NotUndef and (('url' in $source) == ('git' in $source)) {
    fail("tether::application[${title}]: source needs exactly one of url (an archive or a Debian package) and git (a repository)")
  }

  # Header values (of source and of source.git): Sensitive ones are unwrapped into the text,
  # and any literal value (a secret, most of the time) makes the file content Sensitive so
  # that Puppet never prints it in a diff, a log or a report.
  $git = $source.then |$s| { $s['git'] }
  $headers = $source.then |$s| { $s['headers'] }.lest || { {} }
  $git_headers = $git.then |$g| { $g['headers'] }.lest || { {} }
  $literal_headers = [$headers, $git_headers].any |$each| {
    $each.any |$name, $value| { $value =~ Variant[String, Sensitive] }
  }
  $git_spec = $git.then |$g| {
    ($g + { 'headers' => tether::plain_headers($git_headers) }).filter |$key, $value| { tether::given($value) }
  }
  $source_spec = $source.then |$s| {
    ($s + { 'headers' => tether::plain_headers($headers), 'git' => $git_spec })
      .filter |$key, $value| { tether::given($value) }
  }

  $metadata = { 'name' => $title, 'labels' => $labels }.filter |$key, $value| { tether::given($value) }
  # The order of the schema, so that the file reads like `tether schema application`.
  $spec = {
    'application'        => $application,
    'environment'        => $environment,
    'path'               => $path,
    'kind'               => $kind,
    'deployment'         => $deployment,
    'source'             => $source_spec,
    'user'               => $deploy_user,
    'group'              => $deploy_group,
    'userMapping'        => $user_mapping,
    'groupMapping'       => $group_mapping,
    'retention'          => $retention.then |$keep| { { 'keep' => $keep } },
    'hooks'              => $hooks,
    'hookTimeoutSeconds' => $hook_timeout,
    'persistentData'     => $persistent_data,
    'rollbackOnFailure'  => $rollback_on_failure,
    'drift'              => $drift,
    'driftIgnore'        => $drift_ignore,
    'suspend'            => $suspend,
    'rollout'            => $rollout,
    'healthCheck'        => $health_check,
  }.filter |$key, $value| { tether::given($value) }

  $text = tether::to_yaml(
    { 'apiVersion' => 'tether/v1', 'kind' => 'Application', 'metadata' => $metadata, 'spec' => $spec },
    ["Managed by Puppet (Tether::Application[${title}]); local changes are overwritten."],
  )

  # `tether validate FILE` checks one file alone, so an application whose kind lives in
  # another file fails with "unknown kind". When the kind is a tether::kind of this catalog,
  # its file is validated alongside and written first; any other kind cannot be checked here.
  if $kind =~ Undef {
    $validate_with = ''
  } elsif defined(Tether::Kind[$kind]) {
    $validate_with = " ${tether::manifests_dir}/${kind}.yaml"
    Tether::Kind[$kind] -> Tether::Manifest["${tether::manifests_dir}/${title}.yaml"]
  } else {
    $validate_with = undef
  }

  $content = if $literal_headers { Sensitive($text) } else { $text }
  tether::manifest { "${tether::manifests_dir}/${title}.yaml":
    ensure        => $ensure,
    content       => $content,
    validate_with => $validate_with,
  }
}
