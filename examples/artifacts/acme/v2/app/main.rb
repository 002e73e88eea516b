puts "acme v2"
