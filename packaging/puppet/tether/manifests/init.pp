# @summary Install tether, keep its manifests and hooks directories, run its daemon.
#
# The daemon watches `manifests_dir` and reconciles on every change, so the
# manifests written by `tether::application` and `tether::kind` do not notify
# the service.
#
# @example With the Debian package and the systemd unit
#   include tether
#
# @example Only the directories (no package, no service: `tether reconcile` from cron, or a test)
#   class { 'tether':
#     manage_package => false,
#     manage_service => false,
#   }
#
# @param package_name The package that ships tether.
# @param package_ensure `installed`, `latest` or a version.
# @param manage_package Whether to manage the package at all.
# @param service_name The service that runs `tether run`.
# @param manage_service Whether to manage the service at all.
# @param service_ensure `running` or `stopped`.
# @param service_enable Whether the service starts at boot.
# @param manifests_dir Where the manifests go (tether's `--manifests`); root-owned, mode 0755,
#   as tether refuses a directory writable by anyone else. Its parent must exist (the package
#   creates /etc/tether).
# @param purge_manifests Remove every file in `manifests_dir` that Puppet does not manage
#   (subdirectories are left alone).
# @param hooks_dir Where `tether::kind` puts hook files given as `*_source`.
# @param bin The tether command, used by `validate`.
# @param validate Check each manifest with `tether validate`, and the node file with `tether node`, before
#   it replaces the old one.
# @param node_name This node's name for rollouts (`metadata.name` of the node file). When set, the class
#   writes `node_config`; when undef, the node file is left alone (tether then uses the host name).
# @param node_labels This node's labels, which rollout wave selectors match (`metadata.labels`); they need
#   `node_name`.
# @param node_config The node file (tether's `--node-config`), root, 0644. Its directory must exist (the
#   package creates /etc/tether).
# @param web_config TLS and basic auth for the metrics endpoint, in the Prometheus exporter-toolkit format
#   (`tls_server_config`, `http_server_config`, `basic_auth_users` with bcrypt hashes). When set, the class
#   writes it to `web_config_file` (root, 0600) and a systemd drop-in that passes `--web-config-file`
#   (TETHER_WEB_CONFIG_FILE) to the daemon; a change of the file reloads the service (SIGHUP re-reads it).
#   Bind the endpoint beyond loopback with TETHER_METRICS_ADDRESS in /etc/default/tether.
# @param web_config_file Where `web_config` is written (tether's `--web-config-file`); relative paths in it
#   are relative to its directory.
# @param service_dropin_dir The systemd drop-in directory of the service, for the web config's drop-in.
class tether (
  String[1] $package_name = 'tether',
  String[1] $package_ensure = 'installed',
  Boolean $manage_package = true,
  String[1] $service_name = 'tether',
  Boolean $manage_service = true,
  Enum['running', 'stopped'] $service_ensure = 'running',
  Boolean $service_enable = true,
  Tether::Path $manifests_dir = '/etc/tether/manifests',
  Boolean $purge_manifests = false,
  Tether::Path $hooks_dir = '/etc/tether/hooks',
  Tether::Path $bin = '/usr/bin/tether',
  Boolean $validate = true,
  Optional[Tether::NodeName] $node_name = undef,
  Tether::Labels $node_labels = {},
  Tether::Path $node_config = '/etc/tether/node.yaml',
  Optional[Hash[String[1], Data]] $web_config = undef,
  Tether::Path $web_config_file = '/etc/tether/web-config.yml',
  Tether::Path $service_dropin_dir = "/etc/systemd/system/${service_name}.service.d",
) {
  if $node_name =~ Undef and !empty($node_labels) {
    fail('tether: node_labels go into the node file, which needs node_name too')
  }
  if $manage_package {
    package { $package_name:
      ensure => $package_ensure,
      before => File[$manifests_dir, $hooks_dir],
    }
  }

  $purge = $purge_manifests ? {
    true    => { recurse => true, recurselimit => 1, purge => true, force => false },
    default => {},
  }

  file { $manifests_dir:
    ensure => directory,
    owner  => 'root',
    group  => 'root',
    mode   => '0755',
    *      => $purge,
  }

  file { $hooks_dir:
    ensure => directory,
    owner  => 'root',
    group  => 'root',
    mode   => '0755',
  }

  if $node_name =~ NotUndef {
    $metadata = { 'name' => $node_name, 'labels' => $node_labels }.filter |$key, $value| { tether::given($value) }
    # Written like the manifests: to a temporary file beside it, fsynced, checked, renamed over it (see
    # tether::manifest). `tether node` exits 2 on an invalid node file. The daemon reads the file again at
    # every rescan, so it does not notify the service.
    file { $node_config:
      ensure       => file,
      content      => tether::to_yaml(
        { 'apiVersion' => 'tether/v1', 'kind' => 'Node', 'metadata' => $metadata },
        ['Managed by Puppet (Class[tether]: node_name, node_labels); local changes are overwritten.'],
      ),
      owner        => 'root',
      group        => 'root',
      mode         => '0644',
      backup       => false,
      validate_cmd => $validate ? {
        true    => "${bin} node --node-config % --manifests ${manifests_dir}",
        default => undef,
      },
      require      => File[$manifests_dir],
    }
    if $validate and $manage_package {
      Package[$package_name] -> File[$node_config]
    }
  }

  if $web_config =~ NotUndef {
    # tether refuses a bad file at start and keeps the old one on SIGHUP: the service says which key is wrong.
    file { $web_config_file:
      ensure  => file,
      content => tether::to_yaml($web_config, ['Managed by Puppet (Class[tether]: web_config); local changes are overwritten.']),
      owner   => 'root',
      group   => 'root',
      mode    => '0600',
      backup  => false,
    }
    file { $service_dropin_dir:
      ensure => directory,
      owner  => 'root',
      group  => 'root',
      mode   => '0755',
    }
    file { "${service_dropin_dir}/web-config.conf":
      ensure  => file,
      content => "# Managed by Puppet (Class[tether]: web_config_file).\n[Service]\nEnvironment=TETHER_WEB_CONFIG_FILE=${web_config_file}\n",
      owner   => 'root',
      group   => 'root',
      mode    => '0644',
    }
    if $manage_service {
      File["${service_dropin_dir}/web-config.conf"] ~> Service[$service_name]
      exec { "reload ${service_name} for its web config":
        command     => "/bin/systemctl reload ${service_name}",
        refreshonly => true,
        subscribe   => File[$web_config_file],
        require     => Service[$service_name],
      }
    }
  }

  if $manage_service {
    service { $service_name:
      ensure  => $service_ensure,
      enable  => $service_enable,
      require => File[$manifests_dir, $hooks_dir],
    }
    if $manage_package {
      Package[$package_name] ~> Service[$service_name]
    }
  }
}
