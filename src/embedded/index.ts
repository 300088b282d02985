export { BINARIES_PACKAGE, locateBinaries, type PostgresBinaries } from './binaries.js';
export { CLUSTERS_DIR } from './cluster-dir.js';
export {
  EmbeddedPostgresError,
  type EmbeddedPostgresErrorCode,
  isEmbeddedPostgresUnavailable,
} from './errors.js';
export { findFreePort } from './free-port.js';
export {
  type EmbeddedPostgres,
  type EmbeddedPostgresOptions,
  startEmbeddedPostgres,
} from './launcher.js';
export { withParentDeathSignal } from './os-user.js';
export { type SweepOptions, type SweepReport, sweepOrphans } from './orphan-sweep.js';
