# @summary Whether a value belongs in a manifest: not undef, not an empty Hash or Array.
#
# Left out, a field takes tether's default; an empty one would say the same, less clearly.
#
# @param value Any value.
# @return [Boolean] False for undef, {} and [].
function tether::given(Any $value) >> Boolean {
  !($value =~ Undef or $value =~ Hash[Any, Any, 0, 0] or $value =~ Array[Any, 0, 0])
}
