/** Starts the plugin in a Fastify app on a free port, closed at teardown. */
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
