/**
 * Following one entity's `delta` notifications as a client must: a snapshot or a full document is held as it is, a
 * patch applies only to the document at its `basePosition`.
 */
import { applyPatch, type PatchOperation } from '../../lib/protocol/index.js'
import type { Frame } from './client.js'

/** What a client holds after its frames, and how it got there. */
export interface Followed {
  document: unknown
  /** the position of the document held */
  at: string | undefined
  full: number
  delta: number
  /** patches whose base was not the document held (a client must not apply them) */
  refused: number
  /** patches that named the document held but did not apply */
  failed: number
}

/** Folds one entity's frames, in the order they came: `subscribed` replies with a snapshot, and notifications. */
export function follow (frames: readonly Frame[]): Followed {
  const state: Followed = { document: undefined, at: undefined, full: 0, delta: 0, refused: 0, failed: 0 }
  for (const { type, data } of frames) {
    if (type === 'subscribed') {
      if (data.snapshot === undefined) continue
      state.document = data.snapshot.payload
      state.at = data.snapshot.position
    } else if (data.payloadType === 'delta') {
      if (data.basePosition !== state.at) {
        state.refused++
        continue
      }
      try {
        state.document = applyPatch(state.document, data.patch as PatchOperation[])
        state.delta++
      } catch {
        state.failed++
      }
      state.at = data.position
    } else {
      if (data.payloadType === 'full') {
        state.document = data.payload
        state.full++
      }
      state.at = data.position
    }
  }
  return state
}
