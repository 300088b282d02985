/**
 * The one place where options are checked. Every rule is declared in a spec; errors share one
 * format: "Expected `concurrency` to be an integer from 1 to 1000, got `0` (number)", and unknown
 * keys get "did you mean `retryLimit`?".
 */
import { ConfigError } from '../errors.js';

export type Rule =
  | { kind: 'integer'; min: number; max: number; nullable?: boolean }
  | { kind: 'number'; min: number; max: number }
  | { kind: 'boolean' }
  | { kind: 'string'; pattern?: RegExp; describe?: string; maxLength?: number; nullable?: boolean }
  | { kind: 'enum'; values: readonly string[] }
  | { kind: 'date' }
  | { kind: 'any' };

export type Spec = Record<string, Rule>;

function describeValue(value: unknown): string {
  let shown: string;
  if (typeof value === 'string') shown = JSON.stringify(value);
  else if (value instanceof Date)
    shown = Number.isNaN(value.getTime()) ? 'Invalid Date' : value.toISOString();
  else if (typeof value === 'bigint') shown = `${value}n`;
  else {
    try {
      shown = JSON.stringify(value) ?? String(value);
    } catch {
      shown = String(value);
    }
  }
  if (shown.length > 80) shown = `${shown.slice(0, 77)}...`;
  const type = value === null ? 'null' : Array.isArray(value) ? 'array' : typeof value;
  return `\`${shown}\` (${value instanceof Date ? 'Date' : type})`;
}

function expectation(rule: Rule): string {
  switch (rule.kind) {
    case 'integer':
      return `an integer from ${rule.min} to ${rule.max}${rule.nullable ? ' or null' : ''}`;
    case 'number':
      return `a number from ${rule.min} to ${rule.max}`;
    case 'boolean':
      return 'a boolean';
    case 'string':
      return `${rule.describe ?? 'a string'}${rule.nullable ? ' or null' : ''}`;
    case 'enum':
      return `one of ${rule.values.map((v) => `\`${v}\``).join(', ')}`;
    case 'date':
      return 'a valid Date';
    case 'any':
      return 'any value';
  }
}

function fits(rule: Rule, value: unknown): boolean {
  switch (rule.kind) {
    case 'integer':
      if (value === null) return rule.nullable === true;
      return (
        Number.isInteger(value) && (value as number) >= rule.min && (value as number) <= rule.max
      );
    case 'number':
      return (
        typeof value === 'number' &&
        Number.isFinite(value) &&
        value >= rule.min &&
        value <= rule.max
      );
    case 'boolean':
      return typeof value === 'boolean';
    case 'string':
      if (value === null) return rule.nullable === true;
      return (
        typeof value === 'string' &&
        (rule.maxLength === undefined || value.length <= rule.maxLength) &&
        (rule.pattern === undefined || rule.pattern.test(value))
      );
    case 'enum':
      return typeof value === 'string' && rule.values.includes(value);
    case 'date':
      return value instanceof Date && !Number.isNaN(value.getTime());
    case 'any':
      return true;
  }
}

/** Levenshtein distance, for "did you mean" suggestions. */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(
        row[j]! + 1,
        row[j - 1]! + 1,
        prev + (a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1),
      );
      prev = cur;
    }
  }
  return row[b.length]!;
}

export function suggest(key: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Number.POSITIVE_INFINITY;
  for (const candidate of known) {
    const d = distance(key, candidate);
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best !== undefined && bestDistance <= Math.max(2, Math.floor(key.length / 2))
    ? best
    : undefined;
}

/** Throws a ConfigError when a single value breaks its rule. `where` names the call. */
export function checkValue(where: string, name: string, rule: Rule, value: unknown): void {
  if (!fits(rule, value)) {
    throw new ConfigError(
      `${where}: expected \`${name}\` to be ${expectation(rule)}, got ${describeValue(value)}`,
    );
  }
}

/**
 * Validates an options object against a spec: unknown keys are rejected with a suggestion,
 * `undefined` values are treated as absent. Returns the same object, typed.
 */
export function validateOptions<T extends object>(
  where: string,
  spec: Spec,
  options: T | undefined,
): T {
  if (options === undefined || options === null) return {} as T;
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new ConfigError(
      `${where}: expected options to be an object, got ${describeValue(options)}`,
    );
  }
  const known = Object.keys(spec);
  for (const [key, value] of Object.entries(options)) {
    const rule = spec[key];
    if (rule === undefined) {
      const hint = suggest(key, known);
      throw new ConfigError(
        `${where}: unknown option \`${key}\`${hint ? `; did you mean \`${hint}\`?` : ''} ` +
          `(known: ${known.map((k) => `\`${k}\``).join(', ')})`,
      );
    }
    if (value !== undefined) checkValue(where, key, rule, value);
  }
  return options;
}
