# @summary One manifest file in tether's manifests directory (private: used by
#   `tether::application` and `tether::kind`).
#
# Atomic replacement: for a file with `content`, Puppet (7.x, lib/puppet/type/file.rb
# `write` and lib/puppet/util.rb `replace_file`) writes the new text to a temporary file
# in the same directory, fsyncs it, runs `validate_cmd` on it, then renames it over the
# manifest. The temporary name is the file name followed by a date, a process id and a
# random part (lib/puppet/file_system/uniquefile.rb `make_tmpname`, e.g.
# `acme.yaml20240101-4242-1x2y3z`), and its lock directory adds `.lock`: neither ends in
# `.yaml` or `.yml`, so tether never reads a half-written manifest or the temporary copy.
# A new file is created with mode 0644 and Puppet's (root's) ownership before the rename;
# an existing file keeps its owner and mode through the rename.
#
# @param ensure `present` or `absent`.
# @param content The YAML text (Sensitive when it holds a secret).
# @param validate_with Other manifest files `tether validate` reads along with this one,
#   as a string that starts with a space, or '' for none; undef skips validation.
define tether::manifest (
  Enum['present', 'absent'] $ensure,
  Variant[String[1], Sensitive[String[1]]] $content,
  Optional[String] $validate_with = '',
) {
  $validate_cmd = ($tether::validate and $validate_with =~ String) ? {
    true    => "${tether::bin} validate %${validate_with}",
    default => undef,
  }

  if $ensure == 'present' {
    file { $title:
      ensure       => file,
      content      => $content,
      owner        => 'root',
      group        => 'root',
      mode         => '0644',
      # No copy in the filebucket: a manifest may hold header secrets.
      backup       => false,
      validate_cmd => $validate_cmd,
    }
    if $validate_cmd =~ String and $tether::manage_package {
      Package[$tether::package_name] -> File[$title]
    }
  } else {
    file { $title:
      ensure => absent,
      backup => false,
    }
  }
}
