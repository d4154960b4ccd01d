// A JVM HTTPS client for the interception tests: java.net.http.HttpClient (JDK 11+) with the JVM's own proxy
// and trust settings (https.proxyHost/https.proxyPort, javax.net.ssl.trustStore), run as a single source file.
// Prints "<status>\n<body>".
import java.net.InetSocketAddress;
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Get {
  public static void main(String[] args) throws Exception {
    HttpClient client = HttpClient.newBuilder()
        .version(HttpClient.Version.HTTP_1_1)
        .proxy(ProxySelector.getDefault())
        .build();
    HttpResponse<String> res = client.send(
        HttpRequest.newBuilder(URI.create(args[0])).GET().build(), HttpResponse.BodyHandlers.ofString());
    System.out.println(res.statusCode());
    System.out.print(res.body());
  }
}
