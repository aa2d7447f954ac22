package streamfed.interop;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.HashMap;
import java.util.Map;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.io.EncoderFactory;

/**
 * StreamFed's wire format without a Schema Registry: the Confluent framing (magic byte 0, a 4-byte
 * big-endian schema id, the Avro binary body), with the id derived from the schema itself: the low
 * 31 bits of its CRC-64-AVRO parsing fingerprint, so every process agrees on it without a registry.
 */
final class Wire {
  private Wire() {}

  /**
   * The schema id StreamFed gives a schema (streamfed.serde.avro._local_id): the fingerprint's last
   * four bytes as Avro writes it (little-endian, as in single-object encoding) read as a big-endian
   * int, low 31 bits; that is, the byte-reversed high half of the 64-bit value.
   */
  static int localId(Schema schema) {
    long fp = SchemaNormalization.parsingFingerprint64(schema);
    return Integer.reverseBytes((int) (fp >>> 32)) & 0x7FFFFFFF;
  }

  static Schema parse(File avsc) throws IOException {
    return new Schema.Parser().parse(avsc);
  }

  /** The schema in {@code avsc} and its earlier versions (history/NAME.N.avsc next to it), by id. */
  static Map<Integer, Schema> writers(File avsc) throws IOException {
    Map<Integer, Schema> out = new HashMap<>();
    Schema current = parse(avsc);
    out.put(localId(current), current);
    String stem = avsc.getName().replaceAll("\\.avsc$", "");
    File[] old = new File(avsc.getParentFile(), "history").listFiles((d, n) -> n.startsWith(stem + ".") && n.endsWith(".avsc"));
    if (old != null) {
      for (File f : old) {
        Schema s = parse(f);
        out.putIfAbsent(localId(s), s);
      }
    }
    return out;
  }

  static byte[] encode(Schema schema, GenericRecord record) throws IOException {
    ByteArrayOutputStream buf = new ByteArrayOutputStream();
    buf.write(0);
    buf.write(ByteBuffer.allocate(4).putInt(localId(schema)).array());
    BinaryEncoder enc = EncoderFactory.get().binaryEncoder(buf, null);
    new GenericDatumWriter<GenericRecord>(schema).write(record, enc);
    enc.flush();
    return buf.toByteArray();
  }

  /** Decode with the writer schema the id names, resolved to {@code reader}. */
  static GenericRecord decode(byte[] value, Map<Integer, Schema> writers, Schema reader) throws IOException {
    ByteBuffer b = ByteBuffer.wrap(value);
    if (value.length < 5 || b.get() != 0) {
      throw new IOException("not the Confluent wire format (magic byte 0)");
    }
    int id = b.getInt();
    Schema writer = writers.get(id);
    if (writer == null) {
      throw new IOException("unknown schema id " + id + "; known: " + writers.keySet());
    }
    return new GenericDatumReader<GenericRecord>(writer, reader)
        .read(null, DecoderFactory.get().binaryDecoder(value, 5, value.length - 5, null));
  }
}
