package receiver;

import com.codahale.metrics.Counting;
import com.codahale.metrics.MetricRegistry;
import com.codahale.metrics.Timer;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.google.common.eventbus.EventBus;
import io.netty.channel.ChannelDuplexHandler;
import io.netty.channel.ChannelHandler;
import io.netty.channel.ChannelHandlerContext;
import io.netty.channel.ChannelPromise;
import io.netty.channel.EventLoopGroup;
import io.netty.handler.codec.http.HttpResponse;
import org.bouncycastle.jce.provider.BouncyCastleProvider;
import org.graylog.failure.FailureSubmissionService;
import org.graylog2.GraylogNodeConfiguration;
import org.graylog2.configuration.TLSProtocolsConfiguration;
import org.graylog2.inputs.codecs.GelfChunkAggregator;
import org.graylog2.inputs.codecs.GelfCodec;
import org.graylog2.inputs.codecs.gelf.GELFBulkDroppedMsgService;
import org.graylog2.inputs.diagnosis.InputDiagnosisMetrics;
import org.graylog2.inputs.gelf.http.GELFHttpInput;
import org.graylog2.inputs.gelf.tcp.GELFTCPInput;
import org.graylog2.inputs.gelf.udp.GELFUDPInput;
import org.graylog2.inputs.transports.HttpTransport;
import org.graylog2.inputs.transports.NettyTransportConfiguration;
import org.graylog2.inputs.transports.TcpTransport;
import org.graylog2.inputs.transports.UdpTransport;
import org.graylog2.inputs.transports.netty.EventLoopGroupFactory;
import org.graylog2.plugin.LocalMetricRegistry;
import org.graylog2.plugin.Message;
import org.graylog2.plugin.MessageFactory;
import org.graylog2.plugin.ServerStatus;
import org.graylog2.plugin.buffers.InputBuffer;
import org.graylog2.plugin.buffers.MessageEvent;
import org.graylog2.plugin.configuration.Configuration;
import org.graylog2.plugin.configuration.ConfigurationRequest;
import org.graylog2.plugin.inputs.MessageInput;
import org.graylog2.plugin.inputs.failure.InputProcessingException;
import org.graylog2.plugin.inputs.transports.NettyTransport;
import org.graylog2.plugin.inputs.util.ThroughputCounter;
import org.graylog2.plugin.journal.RawMessage;
import org.graylog2.plugin.system.SimpleNodeId;
import org.graylog2.shared.bindings.providers.ObjectMapperProvider;
import org.graylog2.shared.buffers.processors.DecodingProcessor;
import org.graylog2.shared.messageq.MessageQueueAcknowledger;
import org.graylog2.shared.utilities.ExceptionUtils;

import java.io.BufferedWriter;
import java.lang.reflect.InvocationHandler;
import java.lang.reflect.Proxy;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.Security;
import java.util.Base64;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.Callable;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

/**
 * A Graylog GELF input (UDP, TCP or HTTP) on 127.0.0.1, built from Graylog's own classes, that writes one JSON
 * line per message it decodes: what Graylog would store, or why it would not store it.
 *
 * <p>Nothing of Graylog's input path is re-implemented. The real {@link GELFUDPInput}, {@link GELFTCPInput} or
 * {@link GELFHttpInput} is constructed with its real transport ({@link UdpTransport}, {@link TcpTransport},
 * {@link HttpTransport}) and codec ({@link GelfCodec} with {@link GelfChunkAggregator}), configured with the defaults
 * Graylog's input form fills in, and launched: the transport binds the socket and builds its own Netty pipeline
 * (framing, TLS, HTTP decoding, bulk newline splitting, chunk aggregation). What it hands to the input buffer is
 * put through the journal's encoding ({@link RawMessage#encode()}/{@link RawMessage#decode}) and Graylog's
 * {@link DecodingProcessor}, as a Graylog node's process buffer does, and the decoded message is turned into the
 * document Graylog indexes with {@link Message#toElasticSearchObject}.
 *
 * <p>Only collaborators that need a running Graylog node (MongoDB, the journal, the cluster event bus) are stubbed,
 * and only observers are added: the error reports come from the failure service, Graylog's own metrics, and a
 * handler appended just before Graylog's exception logger (and, for HTTP, one beside the response encoder that
 * watches the status codes Graylog sends). None of them changes what Graylog does.
 */
public final class GraylogGelfReceiver {
    /** Fields Graylog itself adds to every message (DecodingProcessor, toElasticSearchObject), not the sender. */
    static final Set<String> GRAYLOG_ADDITIONS = Set.of(
            Message.FIELD_GL2_SOURCE_INPUT, Message.FIELD_GL2_SOURCE_NODE, Message.FIELD_GL2_REMOTE_IP,
            Message.FIELD_GL2_REMOTE_PORT, Message.FIELD_GL2_REMOTE_HOSTNAME, Message.FIELD_GL2_ACCOUNTED_MESSAGE_SIZE,
            Message.FIELD_GL2_RECEIVE_TIMESTAMP, Message.FIELD_STREAMS);
    private static final String INPUT_ID = "gelf-receiver-input";

    /** Graylog's own ObjectMapper (what its indexer and failure service use), for the lines written too. */
    private final ObjectMapper json = new ObjectMapperProvider().get();
    private final BufferedWriter out;
    private final MetricRegistry metricRegistry = new MetricRegistry();
    /** Guice gives the input and its transport a LocalMetricRegistry each; so does this receiver. */
    private final LocalMetricRegistry inputRegistry = new LocalMetricRegistry();
    private final LocalMetricRegistry transportRegistry = new LocalMetricRegistry();
    private final ScheduledExecutorService scheduler = Executors.newSingleThreadScheduledExecutor(daemon("scheduler"));
    /** One decoding thread, so the output keeps the order in which the transport handed messages over. */
    private final ExecutorService decoder = Executors.newSingleThreadExecutor(daemon("decoder"));
    private final AtomicLong journalOffset = new AtomicLong();
    /** Set by the failure service while the DecodingProcessor runs (on the decoder thread only). */
    private InputProcessingException lastFailure;

    private GraylogGelfReceiver(Path outFile) throws IOException {
        out = Files.newBufferedWriter(outFile, StandardCharsets.UTF_8);
    }

    public static void main(String[] args) throws Exception {
        final Map<String, String> opts = parseArgs(args);
        final String protocol = opts.getOrDefault("protocol", "udp");
        final GraylogGelfReceiver receiver = new GraylogGelfReceiver(Path.of(require(opts, "out")));
        final CountDownLatch terminate = new CountDownLatch(1);
        // SIGTERM/SIGINT end the receiver after everything received so far is decoded and written.
        for (String signal : List.of("TERM", "INT")) {
            sun.misc.Signal.handle(new sun.misc.Signal(signal), s -> terminate.countDown());
        }
        // What Graylog's CmdLineTool does at startup; its TLS code (KeyUtil) reads PEM keys through "BC".
        Security.addProvider(new BouncyCastleProvider());
        final MessageInput input;
        try {
            input = receiver.start(protocol, opts);
        } catch (Exception e) {
            e.printStackTrace();
            System.exit(1); // Netty's threads would keep the JVM alive
            return;
        }
        terminate.await();
        input.stop();
        receiver.close();
        System.exit(0);
    }

    private MessageInput start(String protocol, Map<String, String> opts) throws Exception {
        // --- Collaborators of a Graylog node, with Graylog's defaults -------------------------------------------
        final NettyTransportConfiguration nettyConfig = new NettyTransportConfiguration(); // type/tls provider "auto"
        final EventLoopGroupFactory eventLoopGroupFactory = new EventLoopGroupFactory(nettyConfig);
        // What EventLoopGroupProvider builds for the node's inputs.
        final EventLoopGroup bossGroup = eventLoopGroupFactory.create(nettyConfig.getNumThreads(), metricRegistry, "netty-transport");
        final TLSProtocolsConfiguration tlsProtocols = new TLSProtocolsConfiguration(); // Graylog's default protocols
        final ServerStatus serverStatus = new ServerStatus(nodeConfiguration(), Set.of(ServerStatus.Capability.SERVER),
                new EventBus(), () -> null, new SimpleNodeId("gelf-receiver-node"));
        final InputDiagnosisMetrics diagnosisMetrics = new InputDiagnosisMetrics(metricRegistry);
        final GELFBulkDroppedMsgService bulkDropped = new GELFBulkDroppedMsgService(diagnosisMetrics) {
            @Override
            public void handleDroppedMsgOccurrence(RawMessage rawMessage) {
                super.handleDroppedMsgOccurrence(rawMessage);
                // GelfDecoder keeps the first JSON document of a payload and drops the rest.
                reject("GelfDecoder dropped additional JSON content after the first document "
                        + "(GELFBulkDroppedMsgService: enable bulk receiving)", text(rawMessage.getPayload()));
            }
        };
        final GelfChunkAggregator aggregator = new GelfChunkAggregator(scheduler, metricRegistry);
        final MessageFactory messageFactory = defaultMessageFactory();
        final GelfCodec.Factory codecFactory = new GelfCodec.Factory() {
            @Override
            public GelfCodec create(Configuration configuration) {
                return new GelfCodec(configuration, aggregator, messageFactory, bulkDropped);
            }

            @Override
            public GelfCodec.Config getConfig() {
                return new GelfCodec.Config();
            }

            @Override
            public GelfCodec.Descriptor getDescriptor() {
                return new GelfCodec.Descriptor();
            }
        };

        // --- The transport: Graylog's class, with observers appended to its pipeline -----------------------------
        final NettyTransport[] transport = new NettyTransport[1];
        final MessageInput input;
        final Configuration configuration;
        switch (protocol) {
            case "udp" -> {
                final UdpTransport.Factory factory = new UdpTransport.Factory() {
                    @Override
                    public UdpTransport create(Configuration c) {
                        return new UdpTransport(c, eventLoopGroupFactory, nettyConfig, new ThroughputCounter(bossGroup), transportRegistry) {
                            @Override
                            protected LinkedHashMap<String, Callable<? extends ChannelHandler>> getChannelHandlers(MessageInput in) {
                                return withErrorReport(super.getChannelHandlers(in));
                            }
                        };
                    }

                    @Override
                    public UdpTransport.Config getConfig() {
                        return new UdpTransport.Config();
                    }
                };
                final GELFUDPInput.Config config = new GELFUDPInput.Config(factory, codecFactory);
                configuration = inputConfiguration(config.combinedRequestedConfiguration(), opts);
                input = new GELFUDPInput(metricRegistry, configuration, new UdpTransport.Factory() {
                    @Override
                    public UdpTransport create(Configuration c) {
                        return capture(transport, factory.create(c));
                    }

                    @Override
                    public UdpTransport.Config getConfig() {
                        return factory.getConfig();
                    }
                }, codecFactory, inputRegistry, config, new GELFUDPInput.Descriptor(), serverStatus);
            }
            case "tcp" -> {
                final TcpTransport.Factory factory = new TcpTransport.Factory() {
                    @Override
                    public TcpTransport create(Configuration c) {
                        return new TcpTransport(c, bossGroup, eventLoopGroupFactory, nettyConfig, new ThroughputCounter(bossGroup),
                                transportRegistry, tlsProtocols) {
                            @Override
                            protected LinkedHashMap<String, Callable<? extends ChannelHandler>> getChildChannelHandlers(MessageInput in) {
                                return withErrorReport(super.getChildChannelHandlers(in));
                            }
                        };
                    }

                    @Override
                    public TcpTransport.Config getConfig() {
                        return new TcpTransport.Config();
                    }
                };
                final GELFTCPInput.Config config = new GELFTCPInput.Config(factory, codecFactory);
                configuration = inputConfiguration(config.combinedRequestedConfiguration(), opts);
                input = new GELFTCPInput(metricRegistry, configuration, new TcpTransport.Factory() {
                    @Override
                    public TcpTransport create(Configuration c) {
                        return capture(transport, factory.create(c));
                    }

                    @Override
                    public TcpTransport.Config getConfig() {
                        return factory.getConfig();
                    }
                }, codecFactory, inputRegistry, config, new GELFTCPInput.Descriptor(), serverStatus);
            }
            case "http" -> {
                final HttpTransport.Factory factory = new HttpTransport.Factory() {
                    @Override
                    public HttpTransport create(Configuration c) {
                        return new HttpTransport(c, bossGroup, eventLoopGroupFactory, nettyConfig, new ThroughputCounter(bossGroup),
                                transportRegistry, tlsProtocols) {
                            @Override
                            protected LinkedHashMap<String, Callable<? extends ChannelHandler>> getChildChannelHandlers(MessageInput in) {
                                return withResponseReport(withErrorReport(super.getChildChannelHandlers(in)));
                            }
                        };
                    }

                    @Override
                    public HttpTransport.Config getConfig() {
                        return new HttpTransport.Config();
                    }
                };
                final GELFHttpInput.Config config = new GELFHttpInput.Config(factory, codecFactory);
                configuration = inputConfiguration(config.combinedRequestedConfiguration(), opts);
                input = new GELFHttpInput(metricRegistry, configuration, new HttpTransport.Factory() {
                    @Override
                    public HttpTransport create(Configuration c) {
                        return capture(transport, factory.create(c));
                    }

                    @Override
                    public HttpTransport.Config getConfig() {
                        return factory.getConfig();
                    }
                }, codecFactory, inputRegistry, config, new GELFHttpInput.Descriptor(), serverStatus);
            }
            default -> throw new IllegalArgumentException("--protocol must be udp, tcp or http, not " + protocol);
        }
        input.setPersistId(INPUT_ID);
        input.setTitle("gelf-receiver " + protocol);
        input.checkConfiguration();
        input.initialize();

        // --- Decoding, as a Graylog node's process buffer does it ---------------------------------------------
        final DecodingProcessor processor = new DecodingProcessor(
                Map.of(codecFactory.create(configuration).getName(), codecFactory), serverStatus, metricRegistry,
                new NoJournal(), failureService(), metricRegistry.timer("decodeTime"), metricRegistry.timer("parseTime"));
        final Counting incomplete = metricRegistry.meter(MetricRegistry.name(MetricRegistry.name(GelfCodec.class, INPUT_ID), "incomplete"));
        input.launch(new InputBuffer() {
            @Override
            public void insert(RawMessage message) {
                // The journal stores the encoded raw message; the process buffer decodes it again.
                final byte[] journalEntry = message.encode();
                final long offset = journalOffset.getAndIncrement();
                decoder.execute(() -> decode(processor, incomplete, RawMessage.decode(journalEntry, offset)));
            }

            @Override
            public long getUsage() {
                return 0;
            }
        }, null);
        watchDiscardMetrics(aggregator);

        // The transports record their channel in a listener that may run just after launch() returns.
        InetSocketAddress bound = null;
        for (int i = 0; i < 500 && bound == null; i++) {
            bound = (InetSocketAddress) transport[0].getLocalAddress();
            Thread.sleep(10);
        }
        System.out.println("READY " + bound.getPort());
        System.out.flush();
        return input;
    }

    /** Runs Graylog's DecodingProcessor on one raw message and writes what it decided. */
    private void decode(DecodingProcessor processor, Counting incomplete, RawMessage raw) {
        final byte[] payload = raw.getPayload();
        final long incompleteBefore = incomplete.getCount();
        final MessageEvent event = MessageEvent.EVENT_FACTORY.newInstance();
        event.setRaw(raw);
        lastFailure = null;
        try {
            processor.onEvent(event, raw.getJournalOffset(), true);
        } catch (Exception e) { // onEvent catches everything itself; this is only a safety net
            reject("DecodingProcessor threw " + e, text(payload));
            return;
        }
        final Message message = event.getMessage();
        if (message != null) {
            final Map<String, Object> stored = message.toElasticSearchObject(json, metricRegistry.meter("invalidTimestamps"));
            final Map<String, Object> graylog = new LinkedHashMap<>();
            for (String field : GRAYLOG_ADDITIONS) {
                if (stored.containsKey(field)) {
                    graylog.put(field, stored.remove(field));
                }
            }
            final Map<String, Object> line = new LinkedHashMap<>();
            line.put("accepted", true);
            line.put("stored", stored);
            line.put("graylog", graylog);
            // The payload as the codec got it (reassembled, maybe compressed), so a test can compare what
            // was sent with what is stored.
            line.put("payload", Base64.getEncoder().encodeToString(payload));
            write(line);
        } else if (lastFailure != null) {
            final Throwable root = ExceptionUtils.getRootCause(lastFailure);
            final String cause = root == null || root == lastFailure ? "" : " (" + root + ")";
            reject(lastFailure.getMessage() + cause, lastFailure.inputMessage().orElse(text(payload)));
        } else if (incomplete.getCount() > incompleteBefore) {
            reject("DecodingProcessor dropped an incomplete message (empty \"message\" after decoding)", text(payload));
        } else {
            reject("DecodingProcessor produced no message", text(payload));
        }
    }

    /** The failure service the DecodingProcessor reports decoding errors to; it keeps the last one. */
    private FailureSubmissionService failureService() {
        return new FailureSubmissionService(null, null, null, new ObjectMapperProvider()) {
            @Override
            public void submitInputFailure(InputProcessingException e, String inputId) {
                lastFailure = e;
            }
        };
    }

    /**
     * Appends, just before Graylog's "exception-logger" (which NettyTransport always moves to the end), a handler
     * that reports every exception the pipeline raises (too long frame, payload too short for a GELF header, TLS
     * errors) and passes it on unchanged.
     */
    private LinkedHashMap<String, Callable<? extends ChannelHandler>> withErrorReport(
            LinkedHashMap<String, Callable<? extends ChannelHandler>> handlers) {
        handlers.put("receiver-error-report", () -> new ChannelDuplexHandler() {
            @Override
            public void exceptionCaught(ChannelHandlerContext ctx, Throwable cause) {
                reject("transport: " + cause, "");
                ctx.fireExceptionCaught(cause);
            }
        });
        return handlers;
    }

    /**
     * Puts, right after Graylog's HTTP response encoder (where every response Graylog writes passes by, including
     * HttpObjectAggregator's "413 Request Entity Too Large"), a handler that reports responses other than 2xx.
     */
    private LinkedHashMap<String, Callable<? extends ChannelHandler>> withResponseReport(
            LinkedHashMap<String, Callable<? extends ChannelHandler>> handlers) {
        final LinkedHashMap<String, Callable<? extends ChannelHandler>> result = new LinkedHashMap<>();
        handlers.forEach((name, handler) -> {
            result.put(name, handler);
            if (name.equals("encoder")) {
                result.put("receiver-response-report", () -> new ChannelDuplexHandler() {
                    @Override
                    public void write(ChannelHandlerContext ctx, Object msg, ChannelPromise promise) throws Exception {
                        if (msg instanceof HttpResponse response && response.status().codeClass() != io.netty.handler.codec.http.HttpStatusClass.SUCCESS) {
                            reject("HTTP response " + response.status(), "");
                        }
                        super.write(ctx, msg, promise);
                    }
                });
            }
        });
        return result;
    }

    /**
     * Messages Graylog discards without an exception are only visible in its metrics: chunks or payloads the
     * aggregator rejects ("invalidMessages" of the transport), chunked messages that expired incomplete and
     * duplicate chunks (GelfChunkAggregator's counters). Each increase becomes a "not accepted" line.
     */
    private void watchDiscardMetrics(GelfChunkAggregator aggregator) {
        final Map<String, Counting> watched = new LinkedHashMap<>();
        watched.put("invalid GELF payload or chunk discarded (transport metric invalidMessages)", transportRegistry.meter("invalidMessages"));
        watched.put("chunked message expired incomplete (GelfChunkAggregator " + GelfChunkAggregator.EXPIRED_MESSAGES + ")",
                metricRegistry.counter(GelfChunkAggregator.EXPIRED_MESSAGES));
        watched.put("duplicate chunk dropped (GelfChunkAggregator " + GelfChunkAggregator.DUPLICATE_CHUNKS + ")",
                metricRegistry.counter(GelfChunkAggregator.DUPLICATE_CHUNKS));
        final Map<String, Long> seen = new HashMap<>();
        scheduler.scheduleWithFixedDelay(() -> watched.forEach((reason, metric) -> {
            final long now = metric.getCount();
            for (long i = seen.getOrDefault(reason, 0L); i < now; i++) {
                reject(reason, "");
            }
            seen.put(reason, now);
        }), 50, 50, TimeUnit.MILLISECONDS);
    }

    /**
     * The configuration Graylog's input form submits: every field's default (with the codec's overrides, e.g.
     * port 12201 and the NUL delimiter for GELF TCP), then what the command line sets.
     */
    private static Configuration inputConfiguration(ConfigurationRequest request, Map<String, String> opts) {
        final Map<String, Object> values = new HashMap<>();
        request.getFields().forEach((name, field) -> values.put(name, field.getDefaultValue()));
        values.put(NettyTransport.CK_BIND_ADDRESS, "127.0.0.1");
        values.put(NettyTransport.CK_PORT, Integer.parseInt(opts.getOrDefault("port", "0")));
        values.put("enable_bulk_receiving", opts.containsKey("bulk"));
        if (opts.containsKey("max-body")) {
            values.put("max_chunk_size", Integer.parseInt(opts.get("max-body")));
        }
        if (opts.containsKey("max-frame")) {
            values.put("max_message_size", Integer.parseInt(opts.get("max-frame")));
        }
        if (opts.containsKey("recv-buffer")) { // the input's "Receive Buffer Size" (the kernel caps it)
            values.put("recv_buffer_size", Integer.parseInt(opts.get("recv-buffer")));
        }
        if (opts.containsKey("tls")) {
            values.put("tls_enable", true);
            values.put("tls_cert_file", require(opts, "cert"));
            values.put("tls_key_file", require(opts, "key"));
        }
        return new Configuration(values);
    }

    private void reject(String reason, String raw) {
        final Map<String, Object> line = new LinkedHashMap<>();
        line.put("accepted", false);
        line.put("error", reason);
        line.put("raw", raw.length() > 200 ? raw.substring(0, 200) : raw);
        write(line);
    }

    private synchronized void write(Map<String, Object> line) {
        try {
            out.write(json.writeValueAsString(line));
            out.write('\n');
            out.flush();
        } catch (IOException e) {
            throw new IllegalStateException("cannot write the output file", e);
        }
    }

    private void close() throws Exception {
        decoder.shutdown();
        decoder.awaitTermination(10, TimeUnit.SECONDS);
        scheduler.shutdownNow();
        synchronized (this) {
            out.close();
        }
    }

    /**
     * The node configuration ServerStatus reads (only whether message recordings are on: no). Graylog's own
     * implementation, org.graylog2.Configuration, needs the MongoDB driver on the class path, so an interface
     * proxy answers false/null instead.
     */
    private static GraylogNodeConfiguration nodeConfiguration() {
        return (GraylogNodeConfiguration) Proxy.newProxyInstance(GraylogGelfReceiver.class.getClassLoader(),
                new Class<?>[]{GraylogNodeConfiguration.class},
                (proxy, method, args) -> method.isDefault() ? InvocationHandler.invokeDefault(proxy, method, args)
                        : method.getReturnType() == boolean.class ? Boolean.FALSE : null);
    }

    private static <T extends NettyTransport> T capture(NettyTransport[] holder, T transport) {
        holder[0] = transport;
        return transport;
    }

    /** Graylog's MessageFactory implementation is package-private (Guice binds it); it is created reflectively. */
    private static MessageFactory defaultMessageFactory() throws ReflectiveOperationException {
        final var constructor = Class.forName("org.graylog2.plugin.DefaultMessageFactory").getDeclaredConstructor();
        constructor.setAccessible(true);
        return (MessageFactory) constructor.newInstance();
    }

    private static String text(byte[] payload) {
        return new String(payload, 0, Math.min(payload.length, 800), StandardCharsets.UTF_8);
    }

    private static java.util.concurrent.ThreadFactory daemon(String name) {
        return runnable -> {
            final Thread thread = new Thread(runnable, "gelf-receiver-" + name);
            thread.setDaemon(true);
            return thread;
        };
    }

    private static Map<String, String> parseArgs(String[] args) {
        final Map<String, String> opts = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            if (!args[i].startsWith("--")) {
                throw new IllegalArgumentException("unexpected argument " + args[i]);
            }
            final String name = args[i].substring(2);
            if (name.equals("bulk") || name.equals("tls")) {
                opts.put(name, "true");
            } else if (i + 1 < args.length) {
                opts.put(name, args[++i]);
            } else {
                throw new IllegalArgumentException("--" + name + " needs a value");
            }
        }
        return opts;
    }

    private static String require(Map<String, String> opts, String name) {
        final String value = opts.get(name);
        if (value == null) {
            throw new IllegalArgumentException("--" + name + " is required");
        }
        return value;
    }

    /** Stands in for the journal's acknowledger: there is no journal to acknowledge to. */
    private static final class NoJournal implements MessageQueueAcknowledger {
        @Override
        public void acknowledge(Object messageQueueId) {
        }

        @Override
        public void acknowledge(org.graylog2.shared.messageq.Acknowledgeable message) {
        }

        @Override
        public void acknowledge(List<? extends org.graylog2.shared.messageq.Acknowledgeable> messages) {
        }
    }
}
