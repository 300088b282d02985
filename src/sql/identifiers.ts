/**
 * Identifiers are validated and quoted once, at configuration time; values are always bind
 * parameters.
 */
import { checkValue } from '../config/validate.js';

const SCHEMA_PATTERN = /^[a-z_][a-z0-9_]{0,49}$/;

/** Validates a schema name (lower-case letters, digits and `_`, at most 50 characters). */
export function checkSchemaName(where: string, schema: unknown): string {
  checkValue(
    where,
    'schema',
    {
      kind: 'string',
      pattern: SCHEMA_PATTERN,
      describe:
        'a schema name of 1 to 50 lower-case letters, digits or `_`, not starting with a digit',
    },
    schema,
  );
  return schema as string;
}

/** Quotes an identifier for SQL text. */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** Quotes a string literal for SQL text (used only for constants fixed at configuration time). */
export function quoteLiteral(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

/** The NOTIFY channel of a schema: every process using that schema listens on it. */
export function channelFor(schema: string): string {
  return `hark:${schema}`;
}

/** A stable 64-bit advisory lock key (as a decimal string) for a purpose within a schema. */
export function advisoryKey(schema: string, purpose: string): string {
  // FNV-1a, 64-bit, folded to a signed bigint.
  let hash = 0xcbf29ce484222325n;
  for (const byte of Buffer.from(`hark:${schema}:${purpose}`, 'utf8')) {
    hash ^= BigInt(byte);
    hash = (hash * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return BigInt.asIntN(64, hash).toString();
}
