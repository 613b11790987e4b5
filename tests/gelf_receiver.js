#!/usr/bin/env node
// An independent GELF receiver for the tests: whatever our Python sender gets wrong, this decoder,
// written separately (and for UDP using graygelf's own server), should notice.
//
//   node tests/gelf_receiver.js --protocol udp|tcp|http --port P --out FILE
//        [--tls --cert C --key K] [--fail-first N] [--bulk] [--requests FILE]
//        [--max-body BYTES] [--max-frame BYTES]
//
// Prints "READY <port>" once listening (port 0 = any free port). Appends each received GELF message to
// FILE as one JSON line. A payload that Graylog would refuse (invalid JSON, not an object, empty TCP
// frame, oversized body/frame) is appended as {"__receiver_error__": "..."} so tests can assert there
// were none. HTTP: only POST /gelf is accepted (202, like Graylog); --fail-first N answers 500 to the first
// N POSTs without keeping their messages; --bulk splits bodies on newlines (Graylog's bulk receiving);
// --requests FILE logs one JSON line per request (method, url, content-encoding, status, bytes, and the
// client's port, which shows whether keep-alive reused the connection).
'use strict'

const fs = require('fs')
const path = require('path')
const zlib = require('zlib')

function parseArgs(argv) {
  const args = {protocol: 'udp', port: 0, tls: false, bulk: false, failFirst: 0,
    maxBody: 65536, maxFrame: 2 * 1024 * 1024}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const next = () => argv[++i]
    switch (a) {
    case '--protocol': args.protocol = next(); break
    case '--port': args.port = parseInt(next(), 10); break
    case '--out': args.out = next(); break
    case '--tls': args.tls = true; break
    case '--cert': args.cert = next(); break
    case '--key': args.key = next(); break
    case '--fail-first': args.failFirst = parseInt(next(), 10); break
    case '--bulk': args.bulk = true; break
    case '--requests': args.requests = next(); break
    case '--max-body': args.maxBody = parseInt(next(), 10); break
    case '--max-frame': args.maxFrame = parseInt(next(), 10); break
    default:
      process.stderr.write(`unknown argument ${a}\n`)
      process.exit(2)
    }
  }
  if (!args.out) {
    process.stderr.write('--out FILE is required\n')
    process.exit(2)
  }
  return args
}

const args = parseArgs(process.argv.slice(2))

function record(obj) {
  fs.appendFileSync(args.out, JSON.stringify(obj) + '\n')
}

function recordError(text) {
  process.stderr.write(`gelf_receiver: ${text}\n`)
  record({__receiver_error__: text})
}

// Graylog takes exactly one JSON object per message; trailing whitespace is fine, anything else is not.
function acceptJson(text) {
  let value
  try {
    value = JSON.parse(text)
  } catch (e) {
    recordError(`invalid JSON (${e.message}): ${JSON.stringify(text.slice(0, 200))}`)
    return
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    recordError(`not a JSON object: ${JSON.stringify(text.slice(0, 200))}`)
    return
  }
  record(value)
}

function ready(port) {
  process.stdout.write(`READY ${port}\n`)
}

process.on('SIGTERM', () => process.exit(0))
process.on('SIGINT', () => process.exit(0))
process.on('uncaughtException', (e) => recordError(`uncaught: ${e && e.stack ? e.stack : e}`))

function startUdp() {
  const gelfserver = require(path.join(__dirname, 'node', 'node_modules', 'graygelf', 'server'))
  const dgram = require('dgram')
  const listen = (port) => {
    const server = gelfserver()
    server.on('message', (gelf) => record(gelf))
    server.on('error', (e) => recordError(`graygelf: ${e.message}`))
    server.listen(port, '127.0.0.1')
    server._udp.on('listening', () => {
      try {
        server._udp.setRecvBufferSize(32 * 1024 * 1024) // the kernel caps it at rmem_max
      } catch (e) { /* keep the default */ }
      ready(server._udp.address().port)
    })
  }
  if (args.port) return listen(args.port)
  // graygelf turns port 0 into 12201, so find a free port first.
  const probe = dgram.createSocket('udp4')
  probe.bind(0, '127.0.0.1', () => {
    const port = probe.address().port
    probe.close(() => listen(port))
  })
}

function startTcp() {
  const lib = args.tls ? require('tls') : require('net')
  const options = args.tls ? {cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key)} : {}
  const server = lib.createServer(options, (socket) => {
    let pending = Buffer.alloc(0)
    socket.on('data', (data) => {
      pending = pending.length ? Buffer.concat([pending, data]) : data
      let start = 0
      let end
      while ((end = pending.indexOf(0, start)) !== -1) {
        const frame = pending.subarray(start, end)
        start = end + 1
        if (frame.length < 2) {
          recordError(`TCP frame of ${frame.length} bytes (Graylog closes the connection)`)
          socket.destroy()
          return
        }
        if (frame.length > args.maxFrame) {
          recordError(`TCP frame of ${frame.length} bytes over ${args.maxFrame}`)
          socket.destroy()
          return
        }
        acceptJson(frame.toString('utf8'))
      }
      pending = pending.subarray(start)
    })
    socket.on('end', () => {
      if (pending.length) recordError(`TCP connection closed with ${pending.length} unterminated bytes`)
      pending = Buffer.alloc(0)
    })
    socket.on('error', () => {})
  })
  server.on('tlsClientError', (e) => process.stderr.write(`gelf_receiver: TLS client error ${e.message}\n`))
  server.listen(args.port, '127.0.0.1', () => ready(server.address().port))
}

function decodeBody(body, encoding) {
  switch ((encoding || '').toLowerCase()) {
  case 'gzip': case 'x-gzip': return zlib.gunzipSync(body)
  case 'deflate': case 'x-deflate':
    try { return zlib.inflateSync(body) } catch (e) { return zlib.inflateRawSync(body) }
  case '': break
  default: throw new Error(`unsupported Content-Encoding ${encoding}`)
  }
  // No header: Graylog still recognises gzip/zlib bodies by their magic bytes.
  if (body.length >= 2 && body[0] === 0x1f && body[1] === 0x8b) return zlib.gunzipSync(body)
  if (body.length >= 2 && body[0] === 0x78 && ((body[0] << 8) | body[1]) % 31 === 0) return zlib.inflateSync(body)
  return body
}

function startHttp() {
  const lib = args.tls ? require('https') : require('http')
  const options = args.tls ? {cert: fs.readFileSync(args.cert), key: fs.readFileSync(args.key)} : {}
  let posts = 0
  const server = lib.createServer(options, (req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      const raw = Buffer.concat(chunks)
      const encoding = req.headers['content-encoding'] || null
      let status = 202
      let body = null
      if (req.url !== '/gelf') status = 404
      else if (req.method !== 'POST') status = 405
      else if (++posts <= args.failFirst) status = 500
      else {
        try {
          body = decodeBody(raw, encoding)
          if (body.length > args.maxBody) {
            recordError(`HTTP body of ${body.length} bytes over ${args.maxBody}`)
            status = 413
            body = null
          }
        } catch (e) {
          recordError(`HTTP body could not be decoded: ${e.message}`)
          status = 400
        }
      }
      if (args.requests) {
        fs.appendFileSync(args.requests, JSON.stringify({method: req.method, url: req.url,
          content_encoding: encoding, content_type: req.headers['content-type'] || null,
          status: status, bytes: raw.length, remote_port: req.socket.remotePort}) + '\n')
      }
      if (body !== null) {
        const text = body.toString('utf8')
        if (args.bulk) {
          for (const line of text.split(/\r?\n/)) if (line.trim()) acceptJson(line)
        } else {
          acceptJson(text)
        }
      }
      res.writeHead(status, {'Content-Length': '0'})
      res.end()
    })
  })
  server.keepAliveTimeout = 60000
  server.listen(args.port, '127.0.0.1', () => ready(server.address().port))
}

switch (args.protocol) {
case 'udp': startUdp(); break
case 'tcp': startTcp(); break
case 'http': startHttp(); break
default:
  process.stderr.write(`unknown protocol ${args.protocol}\n`)
  process.exit(2)
}
