# @summary Render a Hash as one YAML document, the same text for the same data on every run.
#
# Puppet 7 has no core to_yaml and this module does not depend on stdlib, so the
# document is written here: block mappings and sequences in the order of the data,
# plain scalars only where YAML 1.1 readers (PyYAML) cannot take them for anything
# but a string, literal blocks for scripts, double quotes for everything else.
#
# @param document The data: strings, numbers, booleans, hashes and arrays (no undef).
# @param comment Lines written before the document, each prefixed with `# `.
# @return [String] The YAML text, ending with a newline.
function tether::to_yaml(Hash $document, Array[String] $comment = []) >> String {
  $header = $comment.map |$line| { "# ${line}\n" }.join('')
  "${header}---\n${tether::yaml::block($document, '')}"
}
