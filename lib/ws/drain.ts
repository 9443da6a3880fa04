/**
 * Deploys: an instance that is told to go (SIGTERM in the standalone server, or the decorator's `drain()`) takes no
 * new socket and hands its own to the other instances a slice at a time, spread over `shutdown.drainSeconds`, each
 * closed with 1012 and a reason saying when to come back. The clients resume from the channels' history, so the
 * surviving instances see at most (sockets / drainSeconds) new connections per second, and nobody refetches.
 */
import type { FastifyBaseLogger } from 'fastify'
import { CloseCode, restartReason } from '../protocol/index.js'

/** how often a slice is closed */
export const DRAIN_TICK_MS = 100
/** what a closed socket is told to wait before it comes back (its client adds up to as much again, at random) */
export const RETRY_HINT_MS = 500

/** What a drain closes: the open sockets. */
export interface Drainable {
  readonly open: ReadonlySet<{ readonly isOpen: boolean, close(code: number, reason: string): void }>
  /** set once the drain began: new sockets are closed at once with 1012 */
  draining: boolean
}

/**
 * Closes every open socket with 1012, in slices over `drainSeconds` (0: all at once); resolves once the last slice
 * is closed. Safe to call twice (the second waits for the first).
 */
export async function drain (sockets: Drainable, drainSeconds: number, log: FastifyBaseLogger): Promise<void> {
  if (sockets.draining) return await (drains.get(sockets) ?? Promise.resolve())
  sockets.draining = true
  const ticks = Math.max(1, Math.floor((drainSeconds * 1000) / DRAIN_TICK_MS))
  const perTick = Math.max(1, Math.ceil(sockets.open.size / ticks))
  log.info({ sockets: sockets.open.size, drainSeconds, perTick }, 'changefeed: draining: sockets closed with 1012 a slice at a time')
  const reason = restartReason(RETRY_HINT_MS)
  const done = new Promise<void>((resolve) => {
    const tick = (): void => {
      let closed = 0
      let more = false
      // a closed socket stays in the set until its close handshake ends
      for (const socket of sockets.open) {
        if (!socket.isOpen) continue
        if (closed === perTick) {
          more = true
          break
        }
        socket.close(CloseCode.serviceRestart, reason)
        closed++
      }
      if (!more) return resolve()
      setTimeout(tick, DRAIN_TICK_MS).unref()
    }
    tick()
  })
  drains.set(sockets, done)
  await done
}

const drains = new WeakMap<Drainable, Promise<void>>()
