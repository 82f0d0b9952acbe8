set -e
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1.key 2>/dev/null; }
selfsigned() { # name cn sans
  key $1
  openssl req -x509 -new -key $1.key -out $1.crt -days 36500 -subj "/CN=$2" -addext "subjectAltName=$3" 2>/dev/null
}
ca() { key $1; openssl req -x509 -new -key $1.key -out $1.crt -days 36500 -subj "/CN=$2" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null; }
signed() { # name ca cn sans
  key $1
  openssl req -new -key $1.key -out $1.csr -subj "/CN=$3" 2>/dev/null
  printf "subjectAltName=%s\n" "$4" > $1.ext
  openssl x509 -req -in $1.csr -CA $2.crt -CAkey $2.key -CAcreateserial -out $1.crt -days 36500 -extfile $1.ext 2>/dev/null
}
selfsigned wildcard '*' 'DNS:*'
selfsigned validity 'tls-validity-checks' 'DNS:*,DNS:*.org,DNS:*.wildcard.org'
selfsigned example 'example.com' 'DNS:example.com,DNS:*.example.com'
ca ca 'sluice test CA'
ca ca2 'sluice other CA'
signed client ca 'client' 'DNS:client'
signed checks ca 'abc.example.com' 'DNS:abc.example.com,URI:spiffe://abc.example.com/test-identity,DNS:other.example.com'
signed passthrough ca 'abc.example.com' 'DNS:abc.example.com'
signed terminate ca 'tls.example.com' 'DNS:tls.example.com'
