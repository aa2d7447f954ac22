package streamfed.interop;

import java.io.File;
import java.nio.ByteBuffer;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Reads a StreamFed models topic from the start (committed records only) and prints one JSON line
 * per model version: its number, its parameters' count, and whether their SHA-256 matches the
 * digest the record carries (proof that the bytes decoded exactly).
 *
 * <p>Usage: ModelsReader BOOTSTRAP TOPIC MODEL_VERSION_AVSC COUNT TIMEOUT_SECONDS
 */
public final class ModelsReader {
  public static void main(String[] args) throws Exception {
    String bootstrap = args[0], topic = args[1];
    File avsc = new File(args[2]);
    int count = Integer.parseInt(args[3]);
    long deadline = System.currentTimeMillis() + 1000L * Long.parseLong(args[4]);
    Schema reader = Wire.parse(avsc);
    Map<Integer, Schema> writers = Wire.writers(avsc);
    Properties p = new Properties();
    p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
    p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    int seen = 0;
    try (KafkaConsumer<byte[], byte[]> consumer =
        new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
      TopicPartition tp = new TopicPartition(topic, 0);
      consumer.assign(List.of(tp));
      consumer.seekToBeginning(List.of(tp));
      while (seen < count && System.currentTimeMillis() < deadline) {
        for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(200))) {
          if (r.value() == null) {
            continue; // a tombstone
          }
          GenericRecord v = Wire.decode(r.value(), writers, reader);
          ByteBuffer params = (ByteBuffer) v.get("params");
          byte[] blob = new byte[params.remaining()];
          params.duplicate().get(blob);
          String sha = HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(blob));
          System.out.printf(
              "{\"model\": \"%s\", \"version\": %d, \"num_params\": %d, \"params_sha256\": \"%s\", \"sha256_ok\": %b}%n",
              v.get("model"), (Long) v.get("version"), blob.length / 4, sha,
              sha.equals(v.get("params_sha256").toString()));
          seen++;
        }
      }
    }
    System.exit(seen >= count ? 0 : 1);
  }
}
