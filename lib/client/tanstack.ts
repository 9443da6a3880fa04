/**
 * TanStack Query adapter: a minimal notification (or a resync) invalidates the entity's query; a full one (or a
 * delta, made whole by the client) sets its data, unless the cache already holds something newer; a snapshot (of a
 * subscription, or of a live query's entities) seeds it. Duck-typed: no dependency on @tanstack/query-core.
 */
import { subscriptionKey, type ChangefeedClient, type EntityMap, type Notification } from './index.js'

export interface QueryClientLike {
  invalidateQueries(filters: { queryKey: readonly unknown[] }): unknown
  setQueryData(queryKey: readonly unknown[], updater: unknown): unknown
}

export interface QuerySyncOptions {
  /** the query key of an entity; default [entityType, entityId], and for a tenant's entity [entityType, entityId, tenantId] */
  queryKey?: (entityType: string, entityId: string, tenantId?: string) => readonly unknown[]
}

/** Keeps `queryClient` in step with every subscription of `client`. Returns the function that stops it. */
export function syncQueryClient (client: ChangefeedClient<EntityMap>, queryClient: QueryClientLike, options: QuerySyncOptions = {}): () => void {
  const keyOf = options.queryKey ?? ((entityType: string, entityId: string, tenantId?: string) =>
    tenantId === undefined ? [entityType, entityId] : [entityType, entityId, tenantId])
  const applied = new Map<string, string>()
  const stopNotifications = client.onNotification((n: Notification) => {
    // an entity that left a live query's filter: its document when the frame has it, else it is not gone
    if (n.changeType === 'left' && n.payload === undefined) return
    const queryKey = keyOf(n.entityType, n.entityId, n.tenantId)
    // a delta type's notification reaches observers with the whole document, as a full one does
    if (n.payloadType !== 'full' && n.payloadType !== 'delta') {
      void queryClient.invalidateQueries({ queryKey })
      return
    }
    const id = subscriptionKey(n.entityType, n.entityId, n.tenantId)
    // ISO timestamps compare as strings; a notification older than what was applied is stale
    const last = applied.get(id)
    if (last !== undefined && n.timestamp < last) return
    applied.set(id, n.timestamp)
    queryClient.setQueryData(queryKey, n.changeType === 'deleted' ? null : n.payload)
  })
  const stopResyncs = client.onResync((entityType, entityId, _reason, tenantId) => {
    applied.delete(subscriptionKey(entityType, entityId, tenantId))
    void queryClient.invalidateQueries({ queryKey: keyOf(entityType, entityId, tenantId) })
  })
  // a snapshot is the state when it was read: whatever the cache held of the entity before is older
  const stopSnapshots = client.onSnapshot(({ entityType, entityId, tenantId, payload }) => {
    if (payload === undefined) return
    applied.delete(subscriptionKey(entityType, entityId, tenantId))
    queryClient.setQueryData(keyOf(entityType, entityId, tenantId), payload)
  })
  return () => { stopNotifications(); stopResyncs(); stopSnapshots() }
}
