# @summary Header values as they go into the manifest: Sensitive ones unwrapped.
#
# The caller makes the whole manifest Sensitive when any value is a literal, so that Puppet
# never prints it in a diff, a log or a report.
#
# @param headers Header name => Tether::HeaderValue.
# @return [Hash] The same headers, with Sensitive strings as plain strings.
function tether::plain_headers(Hash $headers) >> Hash {
  $headers.map |$name, $value| {
    $plain = if $value =~ Sensitive { $value.unwrap } else { $value }
    [$name, $plain]
  }.convert_to(Hash)
}
