/**
 * What sql/changefeed.sql must hold to, read from its text: what the integration tests cannot bring about on a real
 * server in reasonable time.
 */
import t from 'tap'
import { triggerScript } from '../../../lib/capture/install.js'

const script = triggerScript()

t.test('every NOTIFY goes through changefeed_say, which sends none while the queue is half full', async (t) => {
  // PostgreSQL fails a transaction at commit when its NOTIFYs do not fit in the queue (8 GB; any role that LISTENs
  // and stays in a transaction fills it): a NOTIFY of ours must not fail a writer's commit, nor another role's DDL
  const calls = [...script.matchAll(/pg_notify\(/g)].map((m) => m.index)
  const say = script.indexOf('FUNCTION @private@.changefeed_say(')
  const end = script.indexOf('$$;', say)
  t.ok(calls.length > 0 && calls.every((at) => at > say && at < end), 'pg_notify is called in changefeed_say alone')
  t.match(script.slice(say, end), /IF pg_notification_queue_usage\(\) >= 0\.5 THEN/, 'which looks at the queue first')
})

t.test('every function searches pg_catalog and pg_temp only', async (t) => {
  const functions = [...script.matchAll(/CREATE OR REPLACE FUNCTION [^]*?\$\$;/g)].map((m) => m[0])
  t.ok(functions.length > 20)
  for (const f of functions) t.match(f, /\n(LANGUAGE \w+( \w+)*) SET search_path = pg_catalog, pg_temp AS \$\$/, f.slice(0, 80))
})
