# @summary The lines of a block mapping or sequence, each indented by `pad`.
#
# @param collection A Hash (a mapping) or an Array (a sequence).
# @param pad The indentation of this level.
# @return [String] Complete lines, each ending with a newline.
function tether::yaml::block(Variant[Hash, Array] $collection, String $pad) >> String {
  $entries = $collection ? {
    Hash    => $collection.map |$key, $value| { ["${tether::yaml::scalar(String($key), '', false)}:", $value] },
    default => $collection.map |$value| { ['-', $value] },
  }
  $entries.map |$entry| {
    $lead = $entry[0]
    $value = $entry[1]
    case $value {
      Hash[Any, Any, 1], Array[Any, 1]: { "${pad}${lead}\n${tether::yaml::block($value, "${pad}  ")}" }
      Hash: { "${pad}${lead} {}\n" }
      Array: { "${pad}${lead} []\n" }
      default: { "${pad}${lead} ${tether::yaml::scalar($value, "${pad}  ")}\n" }
    }
  }.join('')
}
