puts "acme v1"
