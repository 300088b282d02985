/**
 * Best-effort cleanup when Node exits with a server still running: SIGINT (fast shutdown) every
 * tracked postmaster, synchronously. It never calls process.exit() and never changes the exit
 * code. (A SIGKILLed Node runs no hooks: the parent-death signal and the orphan sweep cover it.)
 */
const running = new Set<number>();
let installed = false;

export function trackPostmaster(pid: number): void {
  running.add(pid);
  if (!installed) {
    installed = true;
    process.on('exit', stopTrackedPostmasters);
  }
}

export function untrackPostmaster(pid: number): void {
  running.delete(pid);
}

function stopTrackedPostmasters(): void {
  for (const pid of running) {
    try {
      process.kill(pid, 'SIGINT');
    } catch {
      // already gone
    }
  }
  running.clear();
}
