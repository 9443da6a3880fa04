/**
 * Brokers for the tests. The machine's Redis (6379) and NATS (4222) serve the plain tests; a test that restarts a
 * broker runs its own on a free port, so it never disturbs the others.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { createServer, Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

interface Teardown { teardown(fn: () => unknown): void }

export const REDIS_URL = 'redis://127.0.0.1:6379'
export const NATS_URL = 'nats://127.0.0.1:4222'

const HOW_TO_START: Record<string, string> = {
  Redis: 'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log',
  NATS: 'start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log'
}

export async function portOpen (port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const socket = new Socket()
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
    socket.connect(port, '127.0.0.1')
  })
}

/** Fails with a message saying how to start the service when the machine's broker is not up. */
export async function requireService (name: 'Redis' | 'NATS'): Promise<void> {
  const port = name === 'Redis' ? 6379 : 4222
  if (!await portOpen(port)) throw new Error(`${name} is not reachable at 127.0.0.1:${port}; start it with: ${HOW_TO_START[name]}`)
}

/** A free TCP port on the loopback interface. */
export async function freePort (): Promise<number> {
  return await new Promise((resolve) => {
    const server = createServer()
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port
      server.close(() => resolve(port))
    })
  })
}

async function waitFor (check: () => Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!await check()) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${ms} ms`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

export interface OwnBroker {
  url: string
  stop(): Promise<void>
  start(): Promise<void>
}

/** A broker process of the test's own, stopped at teardown. `args`: more command-line arguments for it. */
export async function ownBroker (t: Teardown, kind: 'redis' | 'nats', args: string[] = []): Promise<OwnBroker> {
  const port = await freePort()
  const store = mkdtempSync(join(tmpdir(), 'changefeed-nats-'))
  let child: ChildProcess | null = null
  const broker: OwnBroker = {
    url: `${kind}://127.0.0.1:${port}`,
    async start () {
      child = kind === 'redis'
        ? spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...args], { stdio: 'ignore' })
        : spawn('/usr/sbin/nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', store, ...args], { stdio: 'ignore' })
      await waitFor(async () => await portOpen(port), `${kind} on port ${port} to start`)
    },
    async stop () {
      const c = child
      child = null
      if (c === null || c.exitCode !== null) return
      const exited = new Promise((resolve) => c.once('exit', resolve))
      c.kill('SIGTERM')
      await exited
      await waitFor(async () => !await portOpen(port), `${kind} on port ${port} to stop`)
    }
  }
  await broker.start()
  t.teardown(async () => await broker.stop())
  return broker
}

/**
 * A Redis Cluster of three masters (no replicas) on free ports, each node in its own directory, created with
 * `redis-cli --cluster create`; stopped at teardown. `url`: the nodes, comma-separated.
 */
export async function ownRedisCluster (t: Teardown): Promise<{ url: string, nodes: OwnBroker[] }> {
  const nodes: OwnBroker[] = []
  for (let i = 0; i < 3; i++) {
    const dir = mkdtempSync(join(tmpdir(), 'changefeed-redis-cluster-'))
    nodes.push(await ownBroker(t, 'redis', ['--cluster-enabled', 'yes', '--cluster-config-file', join(dir, 'nodes.conf'), '--dir', dir]))
  }
  const addresses = nodes.map((n) => n.url.replace('redis://', ''))
  await new Promise<void>((resolve, reject) => {
    const create = spawn('redis-cli', ['--cluster', 'create', ...addresses, '--cluster-replicas', '0', '--cluster-yes'], { stdio: 'ignore' })
    create.once('exit', (code) => code === 0 ? resolve() : reject(new Error(`redis-cli --cluster create exited with ${code}`)))
  })
  const [host, port] = addresses[0].split(':')
  await waitFor(async () => await new Promise<boolean>((resolve) => {
    const info = spawn('redis-cli', ['-h', host, '-p', port, 'cluster', 'info'])
    let out = ''
    info.stdout.on('data', (d: Buffer) => { out += d.toString() })
    info.once('exit', () => resolve(out.includes('cluster_state:ok')))
  }), 'the Redis Cluster to be ready', 30_000)
  return { url: nodes.map((n) => n.url).join(','), nodes }
}
