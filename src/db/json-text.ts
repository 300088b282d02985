/**
 * PostgreSQL's jsonb cannot store two things JSON.stringify happily writes: the NUL character
 * (`\u0000`) and unpaired UTF-16 surrogates (written as `\ud800`-`\udfff` escapes; paired ones
 * are written as the characters themselves). Either fails the whole statement, so they are
 * caught here, before a statement is sent. An escape counts only when preceded by an even number
 * of backslashes (an odd number makes it an escaped backslash followed by letters).
 */
const NUL_ESCAPE = /(^|[^\\])(\\\\)*\\u0000/;
const SURROGATE_ESCAPE = /(^|[^\\])(\\\\)*\\ud[89a-f][0-9a-f]{2}/i;

/** Why jsonb would refuse this JSON text, or undefined when it would not. */
export function unstorableInJsonb(json: string): string | undefined {
  if (!json.includes('\\u')) return undefined;
  if (NUL_ESCAPE.test(json)) return 'a NUL character (\\u0000)';
  if (SURROGATE_ESCAPE.test(json)) return 'an unpaired UTF-16 surrogate';
  return undefined;
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** Makes a string storable (for error messages and stacks, which we keep as they are). */
export function storableText(text: string): string {
  return text.replaceAll('\u0000', '\uFFFD').replace(LONE_SURROGATE, '\uFFFD');
}
