/** Why starting or managing the embedded PostgreSQL failed. */
export type EmbeddedPostgresErrorCode =
  /** The platform binaries package is not installed (e.g. not linux-x64). */
  | 'BINARIES_MISSING'
  /** The binaries are present but unusable (bad layout, unsafe cache directory, ...). */
  | 'BINARIES_BROKEN'
  /** Running as root and the `postgres` OS user could not be found or created. */
  | 'OS_USER_FAILED'
  /** A directory we would create clusters in is not safely ours (wrong owner, a symlink). */
  | 'TEMP_DIR_UNSAFE'
  /** The server's OS user cannot reach the data directory (a parent lacks o+x). */
  | 'DATA_DIR_NOT_SEARCHABLE'
  /** `initdb` failed. */
  | 'INITDB_FAILED'
  /** Another postmaster already runs on this data directory. */
  | 'DATA_DIR_IN_USE'
  /** The requested port is taken. */
  | 'PORT_IN_USE'
  /** The server exited or never became ready. */
  | 'START_FAILED'
  /** `start()` was called on a temporary cluster whose data was deleted by `stop()`. */
  | 'CLUSTER_DELETED';

export class EmbeddedPostgresError extends Error {
  readonly code: EmbeddedPostgresErrorCode;

  constructor(code: EmbeddedPostgresErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'EmbeddedPostgresError';
    this.code = code;
  }
}

/** True for the errors that mean "no embedded PostgreSQL on this machine": callers may skip. */
export function isEmbeddedPostgresUnavailable(error: unknown): error is EmbeddedPostgresError {
  return error instanceof EmbeddedPostgresError && error.code === 'BINARIES_MISSING';
}
