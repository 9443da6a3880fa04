/**
 * Frame once (lib/ws/prepared.ts): the prepared frame is what ws itself would put on the wire, a real ws client
 * reads it among ws's own frames in order, and a socket with compression negotiated (or one closing) goes through ws.
 */
import t from 'tap'
import { once } from 'node:events'
import * as wsModule from 'ws'
import WebSocket, { WebSocketServer, type RawData } from 'ws'
import { PreparedFrame, frameText, sendPrepared, writesDirect } from '../../../lib/ws/prepared.js'

/** ws's frame builder: exported at run time, missing from its types */
const { Sender } = wsModule as unknown as { Sender: { frame(data: Buffer, options: object): Buffer[] } }

t.test('a prepared frame is the frame ws builds, at every length encoding', async (t) => {
  for (const length of [0, 1, 125, 126, 127, 65_535, 65_536, 70_000]) {
    const payload = Buffer.alloc(length, 'x')
    const ws = Buffer.concat(Sender.frame(payload, { fin: true, opcode: 1, mask: false, readOnly: true, rsv1: false }))
    t.same(frameText(payload), ws, `${length} bytes`)
  }
  const prepared = new PreparedFrame('{"type":"notification","é":1}')
  t.equal(prepared.bytes.toString(), prepared.text)
  t.equal(prepared.frame, prepared.frame, 'framed once')
})

async function pair (perMessageDeflate: boolean): Promise<{ server: WebSocket, client: WebSocket, received: string[], close: () => Promise<void> }> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate })
  await once(wss, 'listening')
  const { port } = wss.address() as { port: number }
  const client = new WebSocket(`ws://127.0.0.1:${port}`, { perMessageDeflate })
  const [[server]] = await Promise.all([once(wss, 'connection') as Promise<[WebSocket]>, once(client, 'open')])
  const received: string[] = []
  client.on('message', (data: RawData, binary: boolean) => received.push((binary ? 'binary:' : '') + data.toString()))
  return {
    server,
    client,
    received,
    close: async () => {
      client.terminate()
      await new Promise((resolve) => wss.close(resolve))
    }
  }
}

async function until (condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setImmediate(resolve))
}

t.test('written straight to the TCP stream, in order with ws\'s own frames', async (t) => {
  const { server, received, close } = await pair(false)
  t.teardown(close)
  t.ok(writesDirect(server), 'no extension: direct')
  const big = 'y'.repeat(70_000)
  t.ok(sendPrepared(server, true, new PreparedFrame('one')))
  server.send('two')
  t.ok(sendPrepared(server, true, new PreparedFrame(big)))
  t.ok(sendPrepared(server, true, new PreparedFrame('{"é":"ü"}')))
  await until(() => received.length === 4)
  t.same(received, ['one', 'two', big, '{"é":"ü"}'], 'text frames, in order, none binary')
})

t.test('with compression negotiated, or once closing, the frame goes through ws', async (t) => {
  const { server, received, close } = await pair(true)
  t.teardown(close)
  t.notOk(writesDirect(server), 'permessage-deflate negotiated')
  t.notOk(sendPrepared(server, writesDirect(server), new PreparedFrame('z'.repeat(2000))))
  await until(() => received.length === 1)
  t.equal(received[0], 'z'.repeat(2000), 'compressed by ws and read back')

  const plain = await pair(false)
  t.teardown(plain.close)
  plain.server.close(1000)
  t.notOk(sendPrepared(plain.server, true, new PreparedFrame('late')), 'closing: ws decides (it drops the frame)')
  const [code] = await once(plain.client, 'close') as [number]
  t.equal(code, 1000)
  t.same(plain.received, [], 'nothing written after the close frame')
})

t.test('ws internals that are not the expected ones: no direct writes', async (t) => {
  t.notOk(writesDirect({} as WebSocket))
  t.notOk(writesDirect({ _socket: { write: () => true }, _sender: { _state: 0 }, _extensions: {} } as unknown as WebSocket))
})
