/** The plugin in a Fastify app: on a free port (startApp), or not listening at all (injectedApp); closed at teardown. */
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import changefeed, { type ChangefeedPluginOptions } from '../../lib/index.js'
import { TestClient } from './client.js'

interface Teardown { teardown(fn: () => unknown): void }

export interface RunningApp {
  app: FastifyInstance
  url: string
  client(path?: string): Promise<TestClient>
}

export async function startApp (t: Teardown, options: ChangefeedPluginOptions, fastifyOptions: FastifyServerOptions = {}): Promise<RunningApp> {
  const app = Fastify({ logger: false, ...fastifyOptions })
  await app.register(changefeed, options)
  await app.listen({ host: '127.0.0.1', port: 0 })
  t.teardown(async () => { await app.close() })
  const address = app.server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  const url = `ws://127.0.0.1:${port}${app.changefeed.options.server.path}`
  const clients: TestClient[] = []
  t.teardown(() => { for (const c of clients) c.close() })
  return {
    app,
    url,
    client: async (path = '') => {
      const c = await TestClient.open(url + path)
      clients.push(c)
      return c
    }
  }
}

/**
 * The plugin in a Fastify app that does not listen: clients connect through @fastify/websocket's injectWS, in
 * process, with no socket opened (the unit tier's way to the protocol).
 */
export async function injectedApp (t: Teardown, options: ChangefeedPluginOptions): Promise<Omit<RunningApp, 'url'>> {
  const app = Fastify({ logger: false })
  await app.register(changefeed, options)
  await app.ready()
  t.teardown(async () => { await app.close() })
  const clients: TestClient[] = []
  t.teardown(() => { for (const c of clients) c.close() })
  return {
    app,
    client: async (path = '') => {
      const c = TestClient.adopt(await app.injectWS(app.changefeed.options.server.path + path))
      clients.push(c)
      return c
    }
  }
}
