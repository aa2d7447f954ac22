package streamfed.interop;

import java.io.File;
import java.util.Properties;
import java.util.Random;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Writes card transactions for one site, as a bank's Java system would, in Kafka transactions of
 * 100 records: COMMITTED records in committed transactions, then ABORTED records in a transaction
 * it aborts after they reached the log (a site reads committed records only, so it must never learn
 * those).
 *
 * <p>Usage: TransactionsProducer BOOTSTRAP TOPIC CARD_TRANSACTION_AVSC SITE_ID COMMITTED ABORTED
 */
public final class TransactionsProducer {
  private static final String[] CATEGORIES = {"grocery", "fuel", "restaurant", "online_retail", "electronics"};

  public static void main(String[] args) throws Exception {
    String bootstrap = args[0], topic = args[1], site = args[3];
    Schema schema = Wire.parse(new File(args[2]));
    int committed = Integer.parseInt(args[4]), aborted = Integer.parseInt(args[5]);
    Properties p = new Properties();
    p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, "java-producer-" + site);
    Random rnd = new Random(7);
    try (KafkaProducer<byte[], byte[]> producer =
        new KafkaProducer<>(p, new ByteArraySerializer(), new ByteArraySerializer())) {
      producer.initTransactions();
      int n = 0;
      while (n < committed + aborted) {
        producer.beginTransaction();
        int end = n < committed ? Math.min(committed, n + 100) : committed + aborted;
        for (; n < end; n++) {
          GenericRecord r = new GenericData.Record(schema);
          boolean fraud = rnd.nextDouble() < 0.05;
          r.put("transaction_id", site + "-java-" + n);
          r.put("site_id", site);
          r.put("event_time", System.currentTimeMillis());
          r.put("amount", fraud ? 400 + 600 * rnd.nextDouble() : 5 + 120 * rnd.nextDouble());
          r.put("merchant_category", CATEGORIES[rnd.nextInt(CATEGORIES.length)]);
          r.put("hour", fraud ? rnd.nextInt(5) : 8 + rnd.nextInt(14));
          r.put("card_present", !fraud && rnd.nextBoolean());
          r.put("distance_km", fraud ? 200 + 800 * rnd.nextDouble() : 30 * rnd.nextDouble());
          r.put("account_age_days", 30 + rnd.nextInt(3000));
          r.put("is_fraud", fraud);
          producer.send(new ProducerRecord<>(topic, site.getBytes(), Wire.encode(schema, r)));
        }
        if (n <= committed) {
          producer.commitTransaction();
        } else {
          // send every record of this transaction to the log before aborting it, so that the
          // log really holds aborted records a read_committed consumer must skip
          producer.flush();
          producer.abortTransaction();
        }
      }
    }
    System.out.printf("{\"committed\": %d, \"aborted\": %d}%n", committed, aborted);
  }
}
