/**
 * A consumer of every entry of the built package (compiled by test/e2e/types.test.ts under NodeNext and bundler
 * resolution, strict, with skipLibCheck false): the package's own declarations must compile, not just this file.
 */
import Fastify from 'fastify'
import changefeed, { tagOrigin, type ChangefeedPluginOptions, type ChangefeedStats } from 'fastify-changefeed'
import { ChangefeedClient, type Notification } from 'fastify-changefeed/client'
import { ChangefeedProvider, useEntity } from 'fastify-changefeed/react'
import { syncQueryClient } from 'fastify-changefeed/tanstack'

const app = Fastify()
const options: ChangefeedPluginOptions = { entities: { Team: { access: 'public', payload: 'minimal' } } }
await app.register(changefeed, options)
const stats: ChangefeedStats = app.changefeed.stats()

type Entities = { Team: { name: string } }
const client = new ChangefeedClient<Entities>({ url: 'ws://127.0.0.1:8080/ws', autoConnect: false })
client.subscribe('Team', 'team-1', { onNotification: (n: Notification<{ name: string }>) => n.payload?.name })

export { ChangefeedProvider, useEntity, syncQueryClient, tagOrigin, stats }
