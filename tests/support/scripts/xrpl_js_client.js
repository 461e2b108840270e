// xrpl.js as a ledger API client: runs the steps of argv[3] (a JSON list) over one WebSocket connection to
// argv[2] and prints one JSON result per step.
//
// Steps: {t: "req", r: {command, ...}} sends one request and gives {ok: response} or {err: the node's
// error object}; {t: "events", r: request, events: [type, ...], n: N} sends the request and waits for N
// pushed messages of those types; {t: "until_closed", r: request, max: N} repeats the request until the
// server closes the connection and gives how many were answered, which answers carried "warning":"load",
// the close code, and when each request was sent (seconds).
const xrpl = require('xrpl')

async function main () {
  const url = process.argv[2]
  const steps = JSON.parse(process.argv[3])
  const client = new xrpl.Client(url, { timeout: 10000 })
  let closeCode = null
  client.on('disconnected', (code) => { closeCode = code })
  await client.connect()
  const out = []
  for (const step of steps) {
    try {
      if (step.t === 'req') {
        out.push({ ok: await client.request(step.r) })
      } else if (step.t === 'events') {
        const got = []
        const done = new Promise((resolve) => {
          for (const type of step.events) {
            client.on(type, (m) => { got.push(m); if (got.length >= step.n) resolve() })
          }
        })
        const reply = await client.request(step.r)
        await Promise.race([done, new Promise((resolve) => setTimeout(resolve, 5000))])
        out.push({ ok: reply, pushed: got })
      } else if (step.t === 'until_closed') {
        const warned = []
        const sent = []
        let answered = 0
        let error = null
        for (let i = 1; i <= step.max; i++) {
          try {
            sent.push(performance.now() / 1000)
            const r = await client.request(step.r)
            answered = i
            if (r.warning === 'load') warned.push(i)
          } catch (e) {
            error = String(e)
            break
          }
        }
        await new Promise((resolve) => setTimeout(resolve, 200))
        out.push({ answered, warned, error, closeCode, sent })
      }
    } catch (e) {
      out.push({ err: e.data !== undefined ? e.data : String(e) })
    }
  }
  if (client.isConnected()) await client.disconnect()
  console.log(JSON.stringify(out))
}

main().catch((e) => { console.error(e); process.exit(1) })
