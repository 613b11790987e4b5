// kinesalite (an in-memory Kinesis emulator that reshards like AWS) bound to 127.0.0.1 only.
// Usage: node kinesalite_local.js [port]   (0 = any free port); prints "READY <port>".
const kinesalite = require('kinesalite')

const server = kinesalite({ createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 50 })
server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  console.log(`READY ${server.address().port}`)
})
process.on('SIGTERM', () => server.close(() => process.exit(0)))
