/** pino logger: JSON lines to stdout through an asynchronous destination so logging stays off the hot path. */
import { pino, type Logger } from 'pino';

/**
 * `buffered: false` writes each line at once: for a process that logs rarely and must be heard
 * promptly (a node's primary), not for the request path.
 */
export function createLogger(level: string, name: string, options: { buffered?: boolean } = {}): Logger {
  const destination = options.buffered === false ? pino.destination({ dest: 1, sync: true }) : pino.destination({ dest: 1, sync: false, minLength: 4096 });
  const logger = pino({ level, name, base: { pid: process.pid } }, destination);
  // Flush buffered lines on exit so the last requests are not lost.
  process.once('exit', () => {
    try {
      destination.flushSync();
    } catch {
      // not opened yet: nothing buffered
    }
  });
  return logger;
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
