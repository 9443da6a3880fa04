/**
 * Frame once: a notification goes to thousands of sockets as the same bytes. Its WebSocket frame (RFC 6455 §5.2:
 * FIN and the text opcode, the unmasked payload length, the payload) is built once, on first use, and written as it
 * is to each socket's TCP stream, the way a broadcast server does. ws's own `send` builds a header for every socket
 * and writes header and payload separately.
 *
 * A socket takes the written frame only while ws has nothing of its own in flight and no extension (compression)
 * changes framing: otherwise the frame goes through ws, in order with what ws holds.
 */
import type { WebSocket } from 'ws'

/**
 * A text frame encoded once (`bytes`) and framed once (`frame`), for every socket it goes to; each is made when a
 * socket first needs it (a filter group whose sockets all wait needs neither).
 */
export class PreparedFrame {
  private encoded: Buffer | undefined
  private framed: Buffer | undefined

  constructor (readonly text: string) {}

  get bytes (): Buffer {
    this.encoded ??= Buffer.from(this.text)
    return this.encoded
  }

  /** The whole WebSocket frame, header and payload in one buffer. */
  get frame (): Buffer {
    this.framed ??= frameText(this.bytes)
    return this.framed
  }
}

/** An unmasked, final text frame of `payload` (a server's frames are never masked). */
export function frameText (payload: Buffer): Buffer {
  const length = payload.length
  const header = length < 126 ? 2 : length < 65_536 ? 4 : 10
  const frame = Buffer.allocUnsafe(header + length)
  frame[0] = 0x81
  if (length < 126) {
    frame[1] = length
  } else if (length < 65_536) {
    frame[1] = 126
    frame.writeUInt16BE(length, 2)
  } else {
    frame[1] = 127
    frame.writeUInt32BE(Math.floor(length / 2 ** 32), 2)
    frame.writeUInt32BE(length >>> 0, 6)
  }
  payload.copy(frame, header)
  return frame
}

/** What of ws's WebSocket a direct write depends on (ws 8: the TCP stream, and the sender's queue and state). */
interface WsInternals {
  readyState: number
  _socket?: { write(chunk: Buffer): boolean }
  _sender?: { _state?: unknown, _queue?: unknown[] }
  _extensions?: Record<string, unknown>
}

/** ws's WebSocket.OPEN, and its sender's state when it is not compressing or reading a blob */
const OPEN = 1
const SENDER_IDLE = 0

/** ws's options for a text frame given as bytes */
const TEXT = { binary: false } as const

/**
 * Whether ws lets prepared frames go straight to this socket's TCP stream: no extension was negotiated and its
 * internals are those of the ws version this was written for. Asked once, when the socket opens.
 */
export function writesDirect (socket: WebSocket): boolean {
  const ws = socket as unknown as WsInternals
  return typeof ws._socket?.write === 'function' && Array.isArray(ws._sender?._queue) && typeof ws._sender?._state === 'number' &&
    ws._extensions !== undefined && Object.keys(ws._extensions).length === 0
}

/**
 * Writes a prepared frame: straight to the TCP stream when `direct` (writesDirect) and ws holds nothing of its own
 * that must go first, otherwise through ws. Returns whether it was written straight.
 */
export function sendPrepared (socket: WebSocket, direct: boolean, prepared: PreparedFrame): boolean {
  const ws = socket as unknown as Required<WsInternals>
  if (direct && ws.readyState === OPEN && ws._sender._state === SENDER_IDLE && ws._sender._queue?.length === 0) {
    ws._socket.write(prepared.frame)
    return true
  }
  socket.send(prepared.bytes, TEXT)
  return false
}
