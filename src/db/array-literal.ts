/**
 * A PostgreSQL array literal, `{"a\"b",1,NULL}`, built in one pass. node-postgres serialises a
 * JavaScript array element by element on the event loop; for sendMany's 14 arrays of 100,000
 * jobs that took 1.9-2.5 s of CPU, this takes about 40 % of it (docs/decisions/0002). Inside
 * double quotes only `\` and `"` need escaping; numbers and booleans go as they print.
 */
export function arrayLiteral(
  values: readonly (string | number | boolean | null | undefined)[],
): string {
  const parts = new Array<string>(values.length);
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || v === undefined) parts[i] = 'NULL';
    else if (typeof v === 'string') parts[i] = `"${v.replace(/[\\"]/g, '\\$&')}"`;
    else parts[i] = String(v);
  }
  return `{${parts.join(',')}}`;
}
