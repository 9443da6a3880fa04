/**
 * Mounting fastify-changefeed in an existing API. The host keeps its own routes; the plugin adds /ws and
 * `app.changefeed`. A live feed that never touches the database uses `app.changefeed.publish()`.
 *
 *   DATABASE_URL=postgres://127.0.0.1/league node dist/examples/host-app.js
 */
import Fastify, { type FastifyInstance } from 'fastify'
import changefeed, { type ChangefeedPluginOptions } from '../lib/index.js'

export async function buildHostApp (databaseUrl?: string, extra: ChangefeedPluginOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'warn' } })

  // the host's own API, untouched by the plugin
  app.get('/api/health', async () => ({ ok: true }))

  await app.register(changefeed, {
    databases: databaseUrl === undefined ? [] : [{ name: 'league', url: databaseUrl }],
    capture: { channel: 'league:db_changes' },
    entities: {
      Team: { access: 'public', payload: 'minimal' },
      RugbyGameState: { access: 'public', payload: 'full' },
      // a type that only the host publishes (a high-frequency live feed)
      LiveCommentary: { access: 'public', payload: 'full' }
    },
    ...extra
  })

  // a host route that pushes a change without a database write
  app.post<{ Params: { matchId: string }, Body: { text: string } }>('/api/matches/:matchId/commentary', async (request) => {
    const delivered = await app.changefeed.publish({
      entityType: 'LiveCommentary',
      entityId: request.params.matchId,
      changeType: 'updated',
      payload: { text: request.body.text, at: new Date().toISOString() }
    })
    return { delivered }
  })

  return app
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const app = await buildHostApp(process.env.DATABASE_URL)
  await app.listen({ host: '127.0.0.1', port: Number(process.env.PORT ?? 3000) })
}
