/**
 * A TCP proxy that can cut the network: `cut()` destroys every connection through it (no close frame, no closing
 * handshake: the peers see the TCP connection end) and drops every new one until `restore()`.
 */
import { createServer, connect, type Socket } from 'node:net'

interface Teardown { teardown(fn: () => unknown): void }

export interface CuttableProxy {
  /** the proxy's port on 127.0.0.1 */
  port: number
  cut(): void
  restore(): void
}

/** A proxy on a free port to `target` (a port on 127.0.0.1); closed at teardown. */
export async function cuttableProxy (t: Teardown, target: number): Promise<CuttableProxy> {
  const open = new Set<Socket>()
  let down = false
  const server = createServer((inbound) => {
    if (down) {
      inbound.destroy()
      return
    }
    const outbound = connect(target, '127.0.0.1')
    for (const [from, to] of [[inbound, outbound], [outbound, inbound]]) {
      open.add(from)
      from.pipe(to)
      from.on('error', () => to.destroy())
      from.on('close', () => { open.delete(from); to.destroy() })
    }
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    for (const s of open) s.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  return {
    port: (server.address() as { port: number }).port,
    cut () {
      down = true
      for (const s of open) s.destroy()
    },
    restore () {
      down = false
    }
  }
}
