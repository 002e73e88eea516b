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
