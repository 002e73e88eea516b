# A node that runs tether from the Debian package and deploys two applications.
#
# Apply it with:  puppet apply --modulepath /path/to/packaging/puppet examples/site.pp
# then look at /etc/tether/manifests/ and `tether status`.

# The package, the service (`tether run`, which watches the manifests directory) and the
# directories. Manifests that Puppet does not manage are removed.
class { 'tether':
  purge_manifests => true,
  # Metrics for a central Prometheus: TLS and basic auth (the key and certificate are in /etc/tether/tls,
  # root, 0600; the hash, of 'change-me' here, is bcrypt's, e.g. from `htpasswd -nBC 10 "" | tr -d ':\n'`). TETHER_METRICS_ADDRESS
  # in /etc/default/tether binds the endpoint beyond loopback.
  web_config      => {
    tls_server_config => { cert_file => 'tls/tether.crt', key_file => 'tls/tether.key' },
    basic_auth_users  => { prometheus => '$2y$10$Jmf9uptHuZVizTZuA9nUseWyqF6G5ml.SrAur0wnCUHDW/VvVZoKe' },
  },
}

# A kind: hooks shared by every Rails application. An inline script, and a script that
# Puppet copies from a module (to /etc/tether/hooks/rails/after_activate) and tether runs
# from there.
tether::kind { 'rails':
  before_activate_content => @(SH),
    #!/bin/sh
    set -e
    RAILS_ENV="$ENVIRONMENT" bundle exec rails db:migrate
    | SH
  after_activate_source   => 'puppet:///modules/profile/rails/restart-passenger',
}

# An application of that kind, from a GitLab generic package. The token is read by tether
# from a file at download time, so it never appears in the manifest or in Puppet's reports.
tether::application { 'acme':
  application   => 'acme',
  environment   => 'production',
  path          => '/opt/acme',
  kind          => 'rails',
  deployment    => 'v1.4.2',
  source        => {
    url     => 'https://git.example.com/api/v4/projects/42/packages/generic/acme/{deployment}/acme.tar.gz',
    headers => { 'JOB-TOKEN' => { fromFile => '/etc/tether/secrets/acme-token' } },
    sha256  => '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08',
  },
  deploy_user   => 'deploy',
  deploy_group  => 'deploy',
  user_mapping  => { 'app' => 'www-data' },
  retention     => 3,
}

# A static site without a kind: its own hook, and no `deployment`, so CI sets it with
# `tether deploy website --deployment ... --url ...`.
tether::application { 'website':
  path   => '/srv/www/website',
  source => {
    url => 'https://artifacts.example.com/website/{deployment}.tar.gz',
  },
  hooks  => {
    afterActivate => { path => '/usr/local/bin/reload-nginx' },
  },
}

# A service from a signed git tag: tether keeps a mirror of the repository on the node,
# checks the tag's ssh signature, and deploys the tree of its `dist` directory.
tether::application { 'shop':
  path       => '/srv/shop',
  deployment => 'v2.1.0',
  source     => {
    git => {
      url          => 'ssh://git@git.example.com/shop.git',
      subdirectory => 'dist',
      sshKey       => { fromFile => '/etc/tether/secrets/shop-deploy-key' },
      knownHosts   => '/etc/tether/known_hosts',
      verify       => { allowedSigners => '/etc/tether/keys/shop.allowed_signers' },
    },
  },
}

# A Debian package built by CI: only its /opt/dashboard tree is deployed, and its maintainer
# scripts are not run.
tether::application { 'dashboard':
  path       => '/opt/dashboard',
  deployment => '3.2.0',
  source     => {
    url     => 'https://apt.example.com/pool/main/d/dashboard/dashboard_{deployment}_all.deb',
    debRoot => 'opt/dashboard',
  },
}

# A profile usually points other resources into `current`.
file { '/usr/local/bin/acme-runner':
  ensure => link,
  target => '/opt/acme/current/bin/acme-runner',
}
