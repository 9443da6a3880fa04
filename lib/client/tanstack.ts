/**
 * TanStack Query adapter: a minimal notification (or a resync) invalidates the entity's query; a full one sets its
 * data, unless the cache already holds something newer. Duck-typed: no dependency on @tanstack/query-core.
 */
import type { ChangefeedClient, Notification } from './index.js'

export interface QueryClientLike {
  invalidateQueries(filters: { queryKey: readonly unknown[] }): unknown
  setQueryData(queryKey: readonly unknown[], updater: unknown): unknown
}

export interface QuerySyncOptions {
  /** the query key of an entity; default [entityType, entityId] */
  queryKey?: (entityType: string, entityId: string) => readonly unknown[]
}

/** Keeps `queryClient` in step with every subscription of `client`. Returns the function that stops it. */
export function syncQueryClient (client: ChangefeedClient<any>, queryClient: QueryClientLike, options: QuerySyncOptions = {}): () => void {
  const keyOf = options.queryKey ?? ((entityType: string, entityId: string) => [entityType, entityId])
  const applied = new Map<string, string>()
  const stopNotifications = client.onNotification((n: Notification) => {
    const queryKey = keyOf(n.entityType, n.entityId)
    if (n.payloadType !== 'full') return void queryClient.invalidateQueries({ queryKey })
    const id = n.entityType + ':' + n.entityId
    // ISO timestamps compare as strings; a notification older than what was applied is stale
    const last = applied.get(id)
    if (last !== undefined && n.timestamp < last) return
    applied.set(id, n.timestamp)
    queryClient.setQueryData(queryKey, n.changeType === 'deleted' ? null : n.payload)
  })
  const stopResyncs = client.onResync((entityType, entityId) => {
    applied.delete(entityType + ':' + entityId)
    void queryClient.invalidateQueries({ queryKey: keyOf(entityType, entityId) })
  })
  return () => { stopNotifications(); stopResyncs() }
}
