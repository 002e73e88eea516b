# @summary One scalar as YAML text, read back by any YAML 1.1 or 1.2 reader as the same value.
#
# @param value A string, number or boolean.
# @param pad The indentation of a literal block's lines.
# @param block Whether a multi-line string may become a literal block (`|`); not for keys.
# @return [String] The scalar; a literal block has no final newline.
function tether::yaml::scalar(Variant[String, Numeric, Boolean] $value, String $pad, Boolean $block = true) >> String {
  if $value =~ Boolean {
    String($value)
  } elsif $value =~ Numeric {
    String($value, '%p') # 1.5 and 1.0e+20, where the default format writes 1.500000
  } elsif $value =~ /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u0084\u0086-\u009f\ufffe\uffff]/ {
    # Not even quoted: YAML readers refuse these characters. The value may be a secret: not shown.
    fail('tether: a manifest value holds a control character other than tab and newline; remove it')
  } elsif $value =~ /\A[A-Za-z_\/][A-Za-z0-9_\/.+-]*\z/ and $value !~ /\A(?i:y|yes|n|no|true|false|on|off|null)\z/ {
    # Plain: starts with a letter, `_` or `/` (never a number, a date or an indicator), and is
    # none of the words YAML 1.1 reads as a boolean or null.
    $value
  } elsif $block and $value =~ /\n/ and $value =~ /\A\n*[^\s]/ and $value !~ /[ \t](\n|\z)|[\r\u0085\u2028\u2029]|\n\n\z/ {
    # Literal block: scripts stay readable. Clip (`|`) keeps one final newline, strip (`|-`) none;
    # a leading space, trailing blanks or several final newlines take double quotes instead.
    $indicator = ($value =~ /\n\z/) ? { true => '|', default => '|-' }
    $lines = $value.regsubst(/\n\z/, '').split(/\n/).map |$line| { if $line == '' { '' } else { "${pad}${line}" } }
    "${indicator}\n${lines.join("\n")}"
  } else {
    $escapes = {
      '\\'     => '\\\\',
      '"'      => '\\"',
      "\n"     => '\\n',
      "\t"     => '\\t',
      "\r"     => '\\r',
      "\u0085" => '\\N',
      "\u2028" => '\\L',
      "\u2029" => '\\P',
    }
    $quoted = $value.split('').map |$character| { $escapes[$character].lest || { $character } }.join('')
    "\"${quoted}\""
  }
}
